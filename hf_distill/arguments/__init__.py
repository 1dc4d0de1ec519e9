"""The arguments of a run besides `DistillConfig`'s own fields: the script's `ModelArguments` and `DataArguments`
(`script_arguments`), the field documentation that `--help` and the docs read (`field_docs`), the checks of
`TrainingArguments` values made when the config is built (`training_checks`), the fields of a teacher behind a
server that `DistillConfig` inherits (`teacher_server`), the bounds and "read when" rules declared with each field
and checked by one walker (`field_rules`), and the `Trainer` options and keyword arguments `DistillTrainer` refuses
or adds (`trainer_options`). Nothing here loads a model or reads data."""

# The public names of the module of earlier versions, `hf_distill.arguments`.
from .script_arguments import DATASET_FORMATS, DTYPES, STUDENT_INITS, DataArguments, ModelArguments

__all__ = ["DATASET_FORMATS", "DTYPES", "STUDENT_INITS", "DataArguments", "ModelArguments"]
