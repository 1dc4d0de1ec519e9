"""The teacher a run distils from. Every kind implements one protocol (`protocol.Teacher`: what it gives the loss,
whether the fused path takes it, the models it runs, how a card names it, its side of a batch) and is built once from
the config (`build.build_teacher`): `NoTeacher` (`no_teacher`), `LiveTeacher` (`live`: one model or an ensemble),
`CrossTokenizerTeacher` (`cross_tokenizer`: one model with its own tokenizer), `CachedTeacher` (`cached`: a
teacher cache's top-k) and `ServerTeacher` (`server`: the top-k of a stock vLLM server, over `server_client`).

Beside them, what the kinds need: placement for the distributed engine (`placement`), the check of a teacher's
numbers (`numerics`), the vocabulary two tokenizers share (`shared_vocabulary`), context lengths
(`context_length`), and the teacher cache: its builder (`cache_builder`) and its files, read and checked
(`cache_store`)."""

# The public names of the module of earlier versions, `hf_distill.teachers`, and the protocol.
from .build import build_teacher
from .cached import CachedTeacher
from .cross_tokenizer import CrossTokenizerTeacher
from .live import LiveTeacher, check_member_vocabularies
from .no_teacher import NoTeacher
from .protocol import Teacher
from .server import ServerTeacher

__all__ = [
    "CachedTeacher",
    "CrossTokenizerTeacher",
    "LiveTeacher",
    "NoTeacher",
    "ServerTeacher",
    "Teacher",
    "build_teacher",
    "check_member_vocabularies",
]
