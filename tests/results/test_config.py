"""The destinations file: a good one parses; a wrong one gives one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from governance.errors import ConfigError
from results.config import load


def test_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "results.toml"
    path.write_text(
        '[dicom.pacs]\nae_title = "PACS"\nhost = "pacs"\nport = 104\nsend = ["sr", "heatmap"]\n'
        '[webhook.hook]\nurl = "https://ris/hook"\nsecret = "0123456789abcdef"\n'
        '[hl7.ris]\nhost = "ris"\nport = 2575\n'
    )
    config = load(path)
    assert config.names() == ["pacs", "hook", "ris"]
    assert config.dicom[0].send == ("sr", "heatmap") and config.dicom[0].sr == "comprehensive3d"
    assert not config.webhooks[0].include_accession
    assert "0123456789abcdef" not in repr(config)  # the secret stays out of logs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[dicom.pacs]\nae_title = "PACS"\nhost = "h"\nport = 0\n', "port"),
        ('[dicom.pacs]\nae_title = "A VERY LONG AE TITLE"\nhost = "h"\nport = 1\n', "ae_title"),
        ('[dicom.pacs]\nae_title = "P"\nhost = "h"\nport = 1\nsend = ["pdf"]\n', "send"),
        ('[webhook.h]\nurl = "ftp://x"\nsecret = "0123456789abcdef"\n', "url"),
        ('[webhook.h]\nurl = "http://x"\nsecret = "short"\n', "secret"),
        ("[printer.x]\n", "unknown section"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_a_wrong_file_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "results.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
    assert load(None).empty
