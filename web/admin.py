"""The admin role's JSON API: model versions, threshold policies and API tokens.

Activation needs the admin role and a threshold policy for the version (409 without one);
rollback returns to the version that was active before. Workers read the active version at
every task, so they pick a change up with their next study, without a restart. Every change
is audited with the admin's token name and address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.types import DecoratedCallable
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import deliveries
from governance.db import Store
from governance.errors import NoActiveModel, NotFound, TriageError
from governance.models import ApiToken, ModelVersion, Role, ThresholdPolicy
from governance.policies import list_policies, policy_in_force, set_policy_at_point
from governance.registry import activate_model, active_model, get_model, list_models
from governance.registry import rollback_model as rollback_registry
from governance.tokens import Identity, create_token, list_tokens, revoke_token
from web.auth import RequireRole, client_address, refuse
from web.deps import StoreDep, http_errors, read_store
from web.schemas import (
    REFUSALS,
    ErrorOut,
    ModelOut,
    ModelsOut,
    PolicyBrief,
    PolicyIn,
    PolicyOut,
    TokenCreatedOut,
    TokenIn,
    TokenOut,
)

logger = logging.getLogger(__name__)

CONFLICT: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such model version or token."},
    409: {"model": ErrorOut, "description": "Refused by the registry (e.g. no policy)."},
}

# A route names its response_model only where its handler returns something other than the
# schema (a dict, a row); elsewhere the handler's return annotation is the schema.
router = APIRouter(prefix="/api", tags=["admin"], responses=REFUSALS)

Admin = Annotated[Identity, Depends(RequireRole(Role.ADMIN))]


def _change_route(
    path: str, summary: str, **route: Any
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """Route ``POST /api/PATH``: an audited change, which the registry or the token store may
    refuse (404 or 409, :data:`CONFLICT`); ``route`` is passed on to ``router.post``."""
    return router.post(path, responses=CONFLICT, summary=summary, **route)


def _models(session: Session) -> dict[str, Any]:
    active = active_model(session)
    models = []
    for model in list_models(session):
        policy = policy_in_force(session, model.id)
        models.append(
            ModelOut(
                version=model.version,
                status=model.status,
                clinical=model.clinical,
                sha256=model.sha256,
                architecture=model.architecture,
                input_size=model.input_size,
                temperature=model.temperature,
                description=model.description,
                registered_at=model.registered_at,
                activated_at=model.activated_at,
                policy_in_force=PolicyBrief(
                    version=policy.version,
                    operating_point=policy.operating_point,
                    tau=policy.tau,
                    effective_from=policy.effective_from,
                )
                if policy
                else None,
            )
        )
    return {"active_version": active.version if active else None, "models": models}


@router.get(
    "/models",
    response_model=ModelsOut,
    summary="Registered model versions, their SHA-256 and the active one",
)
def get_models(store: StoreDep, _identity: Admin) -> dict[str, Any]:
    return read_store(store, _models)


def _change(store: Store, work: Any) -> dict[str, Any]:
    """Run a registry change and answer with the models; registry refusals become 409."""

    def run(session: Session) -> dict[str, Any]:
        with http_errors((NoActiveModel, 409)):
            work(session)
        session.flush()
        return _models(session)

    return store.run(run)


@_change_route(
    "/models/{version}/activate",
    "Make a model version the one that serves (it needs a threshold policy)",
    response_model=ModelsOut,
)
def activate(
    request: Request,
    store: StoreDep,
    identity: Admin,
    version: Annotated[str, Path(description="The model version to activate.")],
) -> dict[str, Any]:
    address = client_address(request)
    return _change(
        store,
        lambda s: activate_model(s, version, actor=identity.name, actor_address=address),
    )


@_change_route(
    "/models/rollback",
    "Activate again the version that was active before the current one",
    response_model=ModelsOut,
)
def rollback(request: Request, store: StoreDep, identity: Admin) -> dict[str, Any]:
    address = client_address(request)

    def work(session: Session) -> None:
        with http_errors((NotFound, 409)):
            rollback_registry(session, actor=identity.name, actor_address=address)

    return _change(store, work)


def _policy_out(session: Session, policy: ThresholdPolicy, versions: dict[int, str]) -> PolicyOut:
    current = policy_in_force(session, policy.model_version_id)
    return PolicyOut(
        model_version=versions[policy.model_version_id],
        version=policy.version,
        operating_point=policy.operating_point,
        tau=policy.tau,
        target_metric=policy.target_metric,
        validation=policy.validation or {},
        rationale=policy.rationale,
        approved_by=policy.approved_by,
        effective_from=policy.effective_from,
        created_at=policy.created_at,
        in_force=current is not None and current.id == policy.id,
    )


def _policies(session: Session, model_version: str | None) -> list[PolicyOut]:
    versions = dict(session.execute(select(ModelVersion.id, ModelVersion.version)).all())
    model_id = None
    if model_version is not None:
        ids = [key for key, value in versions.items() if value == model_version]
        if not ids:
            return []
        model_id = ids[0]
    return [_policy_out(session, p, versions) for p in list_policies(session, model_id)]


@router.get(
    "/policies", summary="Threshold policies of every model version (or of one), oldest first"
)
def get_policies(
    store: StoreDep,
    _identity: Admin,
    model_version: Annotated[str | None, Query(description="Only this model version's.")] = None,
) -> list[PolicyOut]:
    return read_store(store, lambda session: _policies(session, model_version))


@_change_route(
    "/policies",
    "Add a threshold policy version; tau defaults to the model's recorded one",
    status_code=201,
)
def post_policy(store: StoreDep, identity: Admin, body: PolicyIn) -> PolicyOut:
    def work(session: Session) -> PolicyOut:
        model = get_model(session, body.model_version)
        with http_errors((ValueError, 422)):
            policy = set_policy_at_point(
                session,
                model,
                operating_point=body.operating_point,
                tau=body.tau,
                rationale=body.rationale,
                approved_by=body.approved_by,
                effective_from=body.effective_from,
                actor=identity.name,
            )
        return _policy_out(session, policy, {model.id: model.version})

    return store.run(work)


def _token_out(row: ApiToken) -> TokenOut:
    return TokenOut.model_validate(row, from_attributes=True)


@router.get("/tokens", summary="API tokens (never the tokens)")
def get_tokens(store: StoreDep, _identity: Admin) -> list[TokenOut]:
    return read_store(store, lambda session: [_token_out(t) for t in list_tokens(session)])


@_change_route(
    "/tokens",
    "Create a radiologist token; the answer is the only time it is shown (admin and "
    "auditor tokens: `cxr-triage token create` on the store's machine)",
    status_code=201,
)
def post_token(
    request: Request, response: Response, store: StoreDep, identity: Admin, body: TokenIn
) -> TokenCreatedOut:
    address = client_address(request)
    response.headers["cache-control"] = "no-store"
    if body.role != Role.RADIOLOGIST:
        # Separation of duties: an admin must not mint admins (or the auditors who check them).
        raise refuse(
            store,
            request,
            403,
            f"{body.role} tokens are created only with `cxr-triage token create` on the "
            "store's machine; the web creates radiologist tokens",
            reason="separation of duties",
            token_prefix=identity.token_prefix,
            roles=(Role.ADMIN,),
            identity=identity,
        )

    def work(session: Session) -> TokenCreatedOut:
        with http_errors((ValueError, 422), (TriageError, 409)):
            row, text = create_token(
                session,
                name=body.name,
                role=body.role,
                created_by=identity.name,
                actor_address=address,
            )
        return TokenCreatedOut(**_token_out(row).model_dump(), token=text)

    return store.run(work)


@_change_route("/tokens/{name}/revoke", "Revoke a token: it is refused from now on")
def post_revoke(
    request: Request,
    store: StoreDep,
    identity: Admin,
    name: Annotated[str, Path(description="The token's name.")],
) -> TokenOut:
    address = client_address(request)

    def work(session: Session) -> TokenOut:
        # NotFound passes on (404); another refusal is a token revoked already.
        with http_errors((NotFound, 404), (TriageError, 409)):
            row = revoke_token(session, name, actor=identity.name, actor_address=address)
        return _token_out(row)

    return store.run(work)


@router.get("/exports", summary="Result exports and notifications, newest first")
def get_exports(
    store: StoreDep,
    _identity: Admin,
    state: Annotated[
        str | None, Query(description="Only this state: pending, sending, retrying, sent, failed.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    with store.read() as session:
        with http_errors((ValueError, 422)):
            rows = deliveries.list_deliveries(session, state=state, limit=limit)
        return [deliveries.delivery_dict(row) for row in rows]


@_change_route(
    "/exports/{delivery_id}/retry",
    "Retry a failed export or notification: a fresh set of attempts, now",
)
def post_export_retry(
    store: StoreDep,
    identity: Admin,
    delivery_id: Annotated[int, Path(description="The delivery's id.")],
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        with http_errors((ValueError, 409)):
            row = deliveries.retry(session, delivery_id, actor=identity.name)
        return deliveries.delivery_dict(row)

    return store.run(work)
