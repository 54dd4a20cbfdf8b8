from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SetPreferencesRequest(_message.Message):
    __slots__ = ("user_id", "personalization", "use_for_training")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_FIELD_NUMBER: _ClassVar[int]
    USE_FOR_TRAINING_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    personalization: bool
    use_for_training: bool
    def __init__(self, user_id: _Optional[str] = ..., personalization: _Optional[bool] = ..., use_for_training: _Optional[bool] = ...) -> None: ...

class GetPreferencesRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class Preferences(_message.Message):
    __slots__ = ("personalization", "use_for_training", "defaults")
    PERSONALIZATION_FIELD_NUMBER: _ClassVar[int]
    USE_FOR_TRAINING_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    personalization: bool
    use_for_training: bool
    defaults: bool
    def __init__(self, personalization: _Optional[bool] = ..., use_for_training: _Optional[bool] = ..., defaults: _Optional[bool] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("events_removed", "impressions_removed", "recent_items_removed", "dataset_rows_removed")
    EVENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEMS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    DATASET_ROWS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    events_removed: int
    impressions_removed: int
    recent_items_removed: bool
    dataset_rows_removed: int
    def __init__(self, events_removed: _Optional[int] = ..., impressions_removed: _Optional[int] = ..., recent_items_removed: _Optional[bool] = ..., dataset_rows_removed: _Optional[int] = ...) -> None: ...
