"""File routes: /resources (X-FLEX 3.3.1.2.16-21), a GridFS-like file store.

The bytes live under ``<data_dir>/resources/<bucket>/<id>``; the metadata (name, media type,
size, digests, owner, free metadata) goes through the store as :class:`~gridhub.hub.model.Resource`.
Buckets are configured (``resources.buckets``, X-FLEX's ``fs`` by default). A file is addressed
by id or by filename (``key=id|filename``; by filename the newest file of that name). The File
schema's ``md5`` is computed at upload and kept in the metadata under the hidden member ``_md5``
(members starting with ``_`` are internal: never served, never patched); ``chunkSize`` is GridFS's
default, as files are stored whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, UploadFile
from fastapi.responses import FileResponse

from gridhub.hub.auth import PolicyError, Principal
from gridhub.hub.auth.policy import require_read_resource, require_upload_resource, require_write_resource
from gridhub.hub.deps import Context, CurrentPrincipal, FaceContext
from gridhub.hub.faces.xflex.errors import XflexError
from gridhub.hub.faces.xflex.schemas import ErrorOut, FileCreatedOut, FileDeletedOut, FileMetadataOut, FileOut
from gridhub.hub.model import ModelError, Resource, format_time, utc_now
from gridhub.hub.store import NotFoundError

__all__ = ["CHUNK_SIZE", "router"]

logger = logging.getLogger(__name__)
router = APIRouter(tags=["resources"])

CHUNK_SIZE = 261_120  # GridFS's default chunk size, reported for compatibility
_MD5 = "_md5"
_COPY = 1 << 20
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 413, 429)}

FsQuery = Annotated[
    str, Query(description="Files storage bucket. Initially it only exists one called *fs*", examples=["fs"])
]
TypeQuery = Annotated[str | None, Query(description="Files media type", examples=["image/png"])]
KeyQuery = Annotated[Literal["id", "filename"], Query(description="Field in which to compare the given value of *id*")]


def _bucket(ctx: FaceContext, fs: str) -> FsPath:
    if fs not in ctx.settings.resource_buckets:
        raise XflexError(404, f"bucket {fs!r} does not exist (buckets: {', '.join(ctx.settings.resource_buckets)})")
    return ctx.settings.resources_dir / fs


def _file_path(ctx: FaceContext, resource: Resource) -> FsPath:
    return ctx.settings.resources_dir / resource.bucket / resource.id


def _lookup(ctx: FaceContext, principal: Principal, fs: str, value: str, key: str) -> Resource:
    _bucket(ctx, fs)
    resource: Resource | None
    if key == "id":
        try:
            resource = ctx.store.get_resource(value)
        except NotFoundError:
            resource = None
        if resource is not None and resource.bucket != fs:
            resource = None
    else:
        visible = []
        for candidate in ctx.store.find_resources(fs, value):
            try:
                require_read_resource(principal, candidate)
            except PolicyError:  # another caller's file of the same name: not this one
                continue
            visible.append(candidate)
        resource = visible[0] if visible else None
    if resource is None:
        raise XflexError(404, f"file with {key} {value!r} does not exist in bucket {fs!r}")
    require_read_resource(principal, resource)
    return resource


def _file_out(resource: Resource) -> FileOut:
    public = {k: v for k, v in resource.metadata.items() if not k.startswith("_")}
    return FileOut.model_validate(
        {
            "_id": resource.id,
            "length": resource.size,
            "chunkSize": CHUNK_SIZE,
            "uploadDate": format_time(resource.created or utc_now()),
            "md5": str(resource.metadata.get(_MD5, "")),
            "filename": resource.filename,
            "metadata": {**public, "type": resource.content_type},
        }
    )


@router.get(
    "/resources",
    response_model=list[FileOut],
    responses=_ERRORS,
    operation_id="resources_get",
    summary="Get files info",
)
def list_files(fs: FsQuery, ctx: Context, principal: CurrentPrincipal, type: TypeQuery = None) -> list[FileOut]:
    """Return the files of a bucket the caller may see, newest first, optionally of one media type."""
    _bucket(ctx, fs)
    out = []
    for resource in ctx.store.find_resources(fs):
        if type is not None and resource.content_type != type:
            continue
        try:
            require_read_resource(principal, resource)
        except PolicyError:  # not the caller's: not listed
            continue
        out.append(_file_out(resource))
    return out


@router.post(
    "/resources",
    status_code=201,
    response_model=FileCreatedOut,
    responses=_ERRORS,
    operation_id="resources_post",
    summary="Upload a file",
)
def upload_file(
    file: UploadFile, fs: FsQuery, request: Request, ctx: Context, principal: CurrentPrincipal, type: TypeQuery = None
) -> FileCreatedOut:
    """Store an uploaded file (multipart/form-data, field ``file``) in a bucket."""
    require_upload_resource(principal)
    folder = _bucket(ctx, fs)
    limit = int(ctx.settings.resource_max_mb * 1024 * 1024)
    filename = FsPath(file.filename or "").name
    if not filename:
        raise XflexError(400, "file: the multipart part has no filename")
    folder.mkdir(parents=True, exist_ok=True)
    md5, sha256, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := file.file.read(_COPY):
                size += len(chunk)
                if size > limit:
                    raise XflexError(
                        413, f"file {filename!r} is larger than {ctx.settings.resource_max_mb:g} MB (resources.max_mb)"
                    )
                md5.update(chunk)
                sha256.update(chunk)
                out.write(chunk)
        resource = Resource(
            id=uuid.uuid4().hex[:24],
            bucket=fs,
            filename=filename,
            content_type=type or file.content_type or "application/octet-stream",
            size=size,
            sha256=sha256.hexdigest(),
            created=utc_now(),
            owner=principal.id,
            metadata={_MD5: md5.hexdigest()},
        )
        os.replace(tmp, folder / resource.id)
    except ModelError as exc:
        FsPath(tmp).unlink(missing_ok=True)
        raise XflexError(400, str(exc)) from None
    except BaseException:
        FsPath(tmp).unlink(missing_ok=True)
        raise
    try:
        ctx.store.put_resource(resource)
    except BaseException:
        (folder / resource.id).unlink(missing_ok=True)
        raise
    logger.info("stored file %s (%s bytes) as %s/%s", filename, size, fs, resource.id)
    return FileCreatedOut.model_validate({"_id": resource.id, "filename": resource.filename})


@router.get(
    "/resources/{id}",
    response_class=FileResponse,
    responses=_ERRORS,
    operation_id="resources_id_get",
    summary="Get a single file",
)
def get_file(id: str, fs: FsQuery, key: KeyQuery, ctx: Context, principal: CurrentPrincipal) -> FileResponse:
    """Send a stored file's bytes with its media type."""
    resource = _lookup(ctx, principal, fs, id, key)
    path = _file_path(ctx, resource)
    if not path.is_file():
        logger.error("file %s/%s (%s) is missing from %s", fs, resource.id, resource.filename, path)
        raise XflexError(404, f"the bytes of file {resource.filename!r} are missing from the file store")
    return FileResponse(
        path, media_type=resource.content_type, filename=resource.filename, content_disposition_type="inline"
    )


@router.delete(
    "/resources/{id}",
    response_model=FileDeletedOut,
    responses=_ERRORS,
    operation_id="resources_id_del",
    summary="Delete a single file",
)
def delete_file(id: str, fs: FsQuery, key: KeyQuery, ctx: Context, principal: CurrentPrincipal) -> FileDeletedOut:
    """Delete a stored file and its metadata."""
    resource = _lookup(ctx, principal, fs, id, key)
    require_write_resource(principal, resource)
    ctx.store.delete_resource(resource.id)
    _file_path(ctx, resource).unlink(missing_ok=True)
    return FileDeletedOut.model_validate({"_id": resource.id})


@router.get(
    "/resources/{id}/info",
    response_model=FileOut,
    responses=_ERRORS,
    operation_id="resources_id_info",
    summary="Get a file and its metadata",
)
def file_info(id: str, fs: FsQuery, key: KeyQuery, ctx: Context, principal: CurrentPrincipal) -> FileOut:
    """Return a stored file's description and metadata."""
    return _file_out(_lookup(ctx, principal, fs, id, key))


@router.patch(
    "/resources/{id}/metadata",
    response_model=FileMetadataOut,
    responses=_ERRORS,
    operation_id="resources_id_metadata",
    summary="Modify the metadata of a file",
)
def patch_metadata(
    id: str,
    fs: FsQuery,
    key: KeyQuery,
    body: Annotated[
        dict[str, Any] | list[dict[str, Any]],
        Body(
            description="Metadata fields to be updated (null removes one); an array of such objects is merged in order",
            examples=[[{"creationTime": "2019-11-10T07:00:00.000Z"}]],  # Annex 1's own example
        ),
    ],
    ctx: Context,
    principal: CurrentPrincipal,
) -> FileMetadataOut:
    """Merge fields into a file's metadata; ``type`` changes its media type.

    Annex 1's own example body is an array (``[{...}]``): its objects are merged in order, a later
    member replacing an earlier one.
    """
    if isinstance(body, list):
        body = {name: value for update in body for name, value in update.items()}
    resource = _lookup(ctx, principal, fs, id, key)
    require_write_resource(principal, resource)
    hidden = sorted(k for k in body if k.startswith("_"))
    if hidden:
        raise XflexError(400, f"metadata member(s) {', '.join(hidden)}: names starting with '_' are internal")
    content_type = body.get("type", resource.content_type)
    if not isinstance(content_type, str) or not content_type:
        raise XflexError(400, f"metadata.type: expected a media type string, got {content_type!r}")
    metadata = dict(resource.metadata)
    for name, value in body.items():
        if name == "type":
            continue
        if value is None:
            metadata.pop(name, None)
        else:
            metadata[name] = value
    try:
        updated = replace(resource, metadata=metadata, content_type=content_type)
    except ModelError as exc:
        raise XflexError(400, str(exc)) from None
    modified = updated != resource
    if modified:
        ctx.store.put_resource(updated)
    key_doc = {"_id": resource.id} if key == "id" else {"filename": resource.filename}
    return FileMetadataOut(
        key=key_doc,
        update={"acknowledged": True, "matchedCount": 1, "modifiedCount": int(modified), "upsertedCount": 0},
    )
