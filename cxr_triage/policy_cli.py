"""``cxr-triage policy``: the threshold policies (the site's SOP) per model version."""

from __future__ import annotations

import argparse

from sqlalchemy.orm import Session

from cxr_triage.store_command import cli_actor, parse_and_open
from governance.errors import ConfigError
from governance.models import OperatingPoint, PolicyMode, ThresholdPolicy
from governance.policies import list_policies, set_mode, set_policy_at_point
from governance.registry import get_model


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage policy",
        description="Threshold policies: the tau a model version's operating point uses, with "
        "who approved it and why. Policies are versioned; a change is a new version.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="list policies", description="List threshold policies.")
    ls.add_argument("--model", metavar="VERSION", help="only this model version")
    st = sub.add_parser(
        "set",
        help="add a policy version for a model",
        description="Add a policy for a model version. tau comes from the model's recorded "
        "operating point (chosen on validation) unless --tau is given.",
    )
    st.add_argument("--model", metavar="VERSION", required=True)
    st.add_argument(
        "--operating-point",
        choices=OperatingPoint.ALL,
        required=True,
        help="triage (high sensitivity), balanced, or precision (high specificity)",
    )
    st.add_argument("--tau", type=float, help="threshold in [0, 1] (default: the model's own)")
    st.add_argument("--approved-by", required=True, help="who approved this policy")
    st.add_argument("--rationale", required=True, help="why this operating point and tau")
    st.add_argument(
        "--mode",
        choices=PolicyMode.ALL,
        default=PolicyMode.LIVE,
        help="live (flags are priorities) or shadow (flags recorded and audited only)",
    )
    md = sub.add_parser(
        "mode",
        help="switch the policy in force between shadow and live",
        description="Switch a model's policy in force between shadow (flags computed, stored, "
        "audited and compared with final reads, never shown as priority, exported or notified) "
        "and live. The switch is a new policy version, with who approved it and why (audited).",
    )
    md.add_argument("mode", choices=PolicyMode.ALL)
    md.add_argument("--model", metavar="VERSION", required=True)
    md.add_argument("--approved-by", required=True, help="who approved the switch")
    md.add_argument("--reason", required=True, help="why (e.g. the sign-off of the silent period)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, _, store = parse_and_open(get_args_parser(), argv)
    if args.action == "list":
        with store.read() as session:
            model_id = get_model(session, args.model).id if args.model else None
            policies = list_policies(session, model_id)
            if not policies:
                print("no policies")
            for p in policies:
                print(
                    f"{p.model_version.version:<32} v{p.version:<3} {p.operating_point:<10} "
                    f"tau={p.tau:.4f} {p.mode} approved_by={p.approved_by} "
                    f"from={p.effective_from:%Y-%m-%d %H:%M}Z  {p.rationale}"
                )
        return 0

    def work(session: Session) -> ThresholdPolicy:
        try:
            return set_policy_at_point(
                session,
                get_model(session, args.model),
                operating_point=args.operating_point,
                tau=args.tau,
                rationale=args.rationale,
                approved_by=args.approved_by,
                actor=cli_actor(),
                mode=args.mode,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    if args.action == "mode":
        policy = store.run(
            lambda s: set_mode(
                s,
                get_model(s, args.model),
                args.mode,
                approved_by=args.approved_by,
                reason=args.reason,
            )
        )
        print(f"policy v{policy.version} for {args.model}: {policy.mode}")
        return 0
    policy = store.run(work)
    print(
        f"policy v{policy.version} for {args.model}: {policy.operating_point} tau={policy.tau:.4f}"
    )
    return 0
