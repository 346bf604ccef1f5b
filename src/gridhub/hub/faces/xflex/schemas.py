"""Request and response bodies of the X-FLEX API (Annex 1), one schema per direction.

Names of members are the annex's own (``authToken``, ``insertedIds``, ``chunkSize``...). Response
models carry ``status: "success"``; errors use :mod:`.errors`' envelope (:class:`ErrorOut`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BulkIn",
    "BulkOut",
    "BulkReport",
    "ConfigOut",
    "DeleteReport",
    "DeletedOut",
    "DocumentOut",
    "DocumentsOut",
    "EmailIn",
    "ErrorOut",
    "FileCreatedOut",
    "FileDeletedOut",
    "FileMetadataOut",
    "FileOut",
    "GatewayIn",
    "GatewayOut",
    "HealthOut",
    "InsertOut",
    "InsertReport",
    "LoginData",
    "LoginIn",
    "LoginOut",
    "MessageOut",
    "StatusOut",
    "TwitterIn",
    "UpdateOut",
    "UpdateReport",
]

Document = dict[str, Any]


class ErrorOut(BaseModel):
    """The error envelope."""

    status: Literal["error"] = "error"
    message: str


class StatusOut(BaseModel):
    """A bare success."""

    status: Literal["success"] = "success"


class MessageOut(StatusOut):
    """A success with a message ('Item updated', 'Item deleted')."""

    message: str


class HealthOut(StatusOut):
    """/health: the service version."""

    data: str = Field(examples=["v2.0"])


class LoginIn(BaseModel):
    """/login request: user ID, name or email, and password."""

    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, examples=["my_user_name"])
    password: str = Field(examples=["secure_password"])


class LoginData(BaseModel):
    """The credentials to send as X-User-ID and X-Auth-Token."""

    authToken: str
    userId: str
    tokenExpires: str = Field(description="When authToken stops working (renew it before)")


class LoginOut(StatusOut):
    """/login response."""

    data: LoginData


class DocumentsOut(StatusOut):
    """Matching documents."""

    data: list[Document]


class DocumentOut(StatusOut):
    """One document."""

    data: Document


class DocumentError(BaseModel):
    """Why one document was refused (gridhub's addition to the annex's report)."""

    index: int
    id: str | None = Field(default=None, alias="_id")
    message: str


class InsertReport(BaseModel):
    """ok/insertedIds/err/errorIds of an insert."""

    ok: int
    insertedIds: list[str]
    err: int
    errorIds: list[str]
    errors: list[DocumentError] = Field(default_factory=list, description="What was wrong with each refused document")


class InsertOut(MessageOut):
    """POST /:layer/:col response."""

    data: InsertReport


class UpdateReport(BaseModel):
    """ok/updatedIds/err/errorIds of an update."""

    ok: int
    updatedIds: list[str]
    err: int
    errorIds: list[str]
    errors: list[DocumentError] = Field(default_factory=list)


class UpdateOut(MessageOut):
    """PATCH /:layer/:col response."""

    data: UpdateReport


class DeleteReport(BaseModel):
    """ok/deletedIds/err/errorIds of a delete."""

    ok: int
    deletedIds: list[str]
    err: int
    errorIds: list[str]


class DeletedOut(MessageOut):
    """DELETE /:layer/:col response."""

    data: DeleteReport


class BulkIn(BaseModel):
    """POST /bulk/:layer/:col request: documents to insert or update; init empties the collection first."""

    model_config = ConfigDict(extra="forbid")
    data: list[Document]
    init: bool = False


class BulkReport(BaseModel):
    """ok/insertedIds/updatedIds/err/errorIds of a bulk write."""

    ok: int
    insertedIds: list[str]
    updatedIds: list[str]
    err: int
    errorIds: list[str]
    errors: list[DocumentError] = Field(default_factory=list)


class BulkOut(MessageOut):
    """POST /bulk/:layer/:col response."""

    data: BulkReport


class ConfigOut(StatusOut):
    """A layer, collection or series configuration."""

    data: Document


class TwitterIn(BaseModel):
    """The annex's TwitterData (accepted for shape; the endpoint answers 501)."""

    consumer_key: str | None = None
    consumer_secret: str | None = None
    access_token_key: str | None = None
    access_token_secret: str | None = None
    status: str | None = None


class EmailIn(BaseModel):
    """Nodemailer message options gridhub supports (others are refused by name)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str | None = Field(default=None, alias="from", examples=["sender@server.com"])
    to: str | list[str] | None = Field(default=None, examples=["receiver@sender.com"])
    cc: str | list[str] | None = None
    bcc: str | list[str] | None = None
    replyTo: str | list[str] | None = None
    subject: str = Field(default="", examples=["Message title"])
    text: str | None = Field(default=None, examples=["Message content"])
    html: str | None = None
    headers: dict[str, str] | None = None


class FileMetadata(BaseModel):
    """A file's metadata: its media type and free members."""

    model_config = ConfigDict(extra="allow")
    type: str


class FileOut(BaseModel):
    """The annex's File schema."""

    model_config = ConfigDict(populate_by_name=True)
    id: str = Field(alias="_id")
    length: int
    chunkSize: int
    uploadDate: str
    md5: str
    filename: str
    metadata: FileMetadata


class FileCreatedOut(BaseModel):
    """POST /resources response."""

    model_config = ConfigDict(populate_by_name=True)
    id: str = Field(alias="_id")
    filename: str


class FileDeletedOut(BaseModel):
    """DELETE /resources/:id response."""

    model_config = ConfigDict(populate_by_name=True)
    id: str = Field(alias="_id")


class FileMetadataOut(BaseModel):
    """PATCH /resources/:id/metadata response: the key used and the update done."""

    key: dict[str, str]
    update: dict[str, Any]


class GatewayIn(BaseModel):
    """POST /gateway request."""

    model_config = ConfigDict(extra="forbid")
    natsCredentials: str | None = Field(
        default=None, description="Accepted for compatibility; the hub connects to NATS with its own credentials"
    )
    subject: str = Field(examples=["metrics.get"], description="<service>.<action>[...], without the domain")
    method: Literal["request", "publish"] = "request"
    params: dict[str, Any] = Field(default_factory=dict)


class GatewayOut(StatusOut):
    """POST /gateway response: the service's answer (absent for publish)."""

    data: Any = None
