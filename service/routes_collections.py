"""Collections over HTTP: list; admins add and delete documents."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path

from candor.ingest.collections import list_collections as _list
from candor.ingest.pipeline import delete_documents, ingest_documents
from candor.service.deps import AdminDep, PrincipalDep, ServicesDep
from candor.service.schemas import COLLECTION_PATTERN, DocumentsIn

router = APIRouter(tags=["collections"])

CollectionName = Annotated[str, Path(pattern=COLLECTION_PATTERN)]


@router.get("/v1/collections", summary="Collections this key may use")
async def list_collections(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    names = await anyio.to_thread.run_sync(_list, services.settings)
    return {"collections": [n for n in names if principal.can_use(n)]}


@router.post("/v1/collections/{name}/documents", status_code=201, summary="Add or replace documents (admin)")
async def add_documents(name: CollectionName, body: DocumentsIn, principal: AdminDep, services: ServicesDep):
    principal.require_collection(name)
    docs = [d.model_dump() for d in body.documents]
    report = await anyio.to_thread.run_sync(ingest_documents, services.settings, name, docs)
    return report.to_dict()


@router.delete("/v1/collections/{name}/documents/{doc_id:path}", summary="Delete one document (admin)")
async def delete_document(name: CollectionName, doc_id: str, principal: AdminDep, services: ServicesDep):
    principal.require_collection(name)
    deleted = await anyio.to_thread.run_sync(delete_documents, services.settings, name, [doc_id])
    return {"collection": name, "deleted": deleted}
