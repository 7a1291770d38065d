"""Patient / Study / Series / Instance tables with kept-up-to-date counts.

Columns are flat and indexed for the lookups C-FIND makes (PS3.4 C.6.1/C.6.2 keys); the
counts and ModalitiesInStudy are maintained at ingest so queries never aggregate.
"""

from __future__ import annotations

from peewee import (
    AutoField,
    BigIntegerField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

database = DatabaseProxy()

SCHEMA_VERSION = 1


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Meta(BaseModel):
    """Key/value facts about the catalogue itself (schema version)."""

    key = CharField(primary_key=True, max_length=64)
    value = TextField()


class Patient(BaseModel):
    id = AutoField()
    patient_id = CharField(max_length=64, unique=True)  # "" when the sender gave none
    patient_name = CharField(max_length=324, null=True, index=True)
    patient_name_folded = CharField(max_length=324, null=True, index=True)
    issuer_of_patient_id = CharField(max_length=64, null=True)
    patient_birth_date = CharField(max_length=8, null=True, index=True)
    patient_sex = CharField(max_length=16, null=True)
    specific_character_set = CharField(max_length=128, null=True)
    num_studies = IntegerField(default=0)
    num_series = IntegerField(default=0)
    num_instances = IntegerField(default=0)


class Study(BaseModel):
    id = AutoField()
    study_uid = CharField(max_length=64, unique=True)
    patient = ForeignKeyField(Patient, backref="studies", index=True, on_delete="CASCADE")
    study_date = CharField(max_length=8, null=True, index=True)
    study_time = CharField(max_length=16, null=True)
    accession_number = CharField(max_length=64, null=True, index=True)
    study_id = CharField(max_length=16, null=True)
    study_description = CharField(max_length=64, null=True)
    referring_physician_name = CharField(max_length=324, null=True)
    referring_physician_name_folded = CharField(max_length=324, null=True)
    institution_name = CharField(max_length=64, null=True)
    specific_character_set = CharField(max_length=128, null=True)
    modalities_in_study = CharField(max_length=256, default="")  # backslash list, sorted
    num_series = IntegerField(default=0)
    num_instances = IntegerField(default=0)
    created_at = DateTimeField(index=True)


class Series(BaseModel):
    id = AutoField()
    series_uid = CharField(max_length=64, unique=True)
    study = ForeignKeyField(Study, backref="series", index=True, on_delete="CASCADE")
    modality = CharField(max_length=16, null=True, index=True)
    series_number = IntegerField(null=True)
    series_description = CharField(max_length=64, null=True)
    body_part_examined = CharField(max_length=16, null=True)
    series_date = CharField(max_length=8, null=True)
    series_time = CharField(max_length=16, null=True)
    protocol_name = CharField(max_length=64, null=True)
    num_instances = IntegerField(default=0)


class Instance(BaseModel):
    id = AutoField()
    sop_instance_uid = CharField(max_length=64, unique=True)
    series = ForeignKeyField(Series, backref="instances", index=True, on_delete="CASCADE")
    sop_class_uid = CharField(max_length=64, index=True)
    instance_number = IntegerField(null=True)
    content_date = CharField(max_length=8, null=True)
    content_time = CharField(max_length=16, null=True)
    image_type = CharField(max_length=256, null=True)
    # storage
    path = CharField(max_length=512)
    transfer_syntax = CharField(max_length=64)
    size = BigIntegerField()
    sha256 = CharField(max_length=64)
    source_ae = CharField(max_length=16, null=True)
    received_at = DateTimeField()
    # pixel data, so frames are served by a file read
    pixel_offset = BigIntegerField(null=True)
    pixel_length = BigIntegerField(null=True)
    encapsulated = IntegerField(default=0)
    frame_fragments = TextField(null=True)  # JSON [[[offset, length], ...], ...] per frame
    rows = IntegerField(null=True)
    columns = IntegerField(null=True)
    number_of_frames = IntegerField(null=True)
    samples_per_pixel = IntegerField(null=True)
    photometric_interpretation = CharField(max_length=16, null=True)
    bits_allocated = IntegerField(null=True)
    bits_stored = IntegerField(null=True)
    pixel_representation = IntegerField(null=True)
    rescale_slope = FloatField(null=True)
    rescale_intercept = FloatField(null=True)
    window_center = CharField(max_length=128, null=True)
    window_width = CharField(max_length=128, null=True)
    pixel_spacing = CharField(max_length=64, null=True)
    image_position_patient = CharField(max_length=128, null=True)
    image_orientation_patient = CharField(max_length=256, null=True)
    slice_location = FloatField(null=True)
    specific_character_set = CharField(max_length=128, null=True)




class User(BaseModel):
    """A person or program allowed to use the HTTP API; the password is a memory-hard hash."""

    id = AutoField()
    username = CharField(max_length=64, unique=True)
    password_hash = CharField(max_length=256)
    role = CharField(max_length=16)  # admin | viewer | uploader
    disabled = IntegerField(default=0)
    created_at = DateTimeField()


class RefreshToken(BaseModel):
    """One issued refresh token (its SHA-256 only); a family is one login's chain of rotations,
    revoked whole when a retired member is presented again."""

    id = AutoField()
    token_hash = CharField(max_length=64, unique=True)
    family = CharField(max_length=32, index=True)
    user = ForeignKeyField(User, backref="refresh_tokens", index=True, on_delete="CASCADE")
    issued_at = DateTimeField()
    expires_at = DateTimeField()
    used_at = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)


class AuditEntry(BaseModel):
    """Who read which study, when and from where (HTTP API reads)."""

    id = AutoField()
    at = DateTimeField(index=True)
    username = CharField(max_length=64, index=True)
    study_uid = CharField(max_length=64, index=True)
    action = CharField(max_length=32)
    address = CharField(max_length=64, null=True)


class RetrieveJob(BaseModel):
    """A bounded bulk retrieval from a remote, run by the serving node and resumed after a
    restart; ``owner``/``lease_until`` say which process runs it (scu.jobs)."""

    id = AutoField()
    remote = CharField(max_length=16)
    method = CharField(max_length=8)  # "move" | "get"
    selection = TextField()  # JSON [[keyword, value], ...]: what to fetch, as C-FIND keys
    priority = TextField(default="[]")  # JSON [SeriesInstanceUID, ...] fetched first
    state = CharField(max_length=16, index=True)  # queued | running | completed | failed | cancelled
    cancel_requested = IntegerField(default=0)
    planned = IntegerField(default=0)  # the series list below is complete
    owner = CharField(max_length=128, null=True)
    lease_until = DateTimeField(null=True)
    attempts = IntegerField(default=0)  # of the C-FIND planning
    next_attempt_at = DateTimeField(null=True)
    last_error = TextField(null=True)
    created_at = DateTimeField()
    started_at = DateTimeField(null=True)
    finished_at = DateTimeField(null=True)
    updated_at = DateTimeField()


class RetrieveSeries(BaseModel):
    """One series of a retrieval job: what the remote said it holds and what arrived."""

    id = AutoField()
    job = ForeignKeyField(RetrieveJob, backref="series", index=True, on_delete="CASCADE")
    rank = IntegerField()  # fetch order: priority series first, then as the remote listed them
    study_uid = CharField(max_length=64)
    series_uid = CharField(max_length=64)
    modality = CharField(max_length=16, null=True)
    series_number = IntegerField(null=True)
    instance_uids = TextField(null=True)  # JSON list; null when the remote refused IMAGE level
    expected = IntegerField(default=0)
    received = IntegerField(default=0)
    failed = IntegerField(default=0)
    attempts = IntegerField(default=0)
    state = CharField(max_length=16, index=True)  # pending | done | failed
    last_error = TextField(null=True)
    next_attempt_at = DateTimeField(null=True)
    updated_at = DateTimeField()

    class Meta:
        indexes = ((("job", "series_uid"), True),)


ALL_MODELS = [Meta, Patient, Study, Series, Instance, User, RefreshToken, AuditEntry, RetrieveJob,
              RetrieveSeries]

from db import uploads as _uploads  # noqa: E402,F401 - upload sessions add their tables to ALL_MODELS
from db import forwarding as _forwarding  # noqa: E402,F401 - the forwarding queue adds its table to ALL_MODELS
