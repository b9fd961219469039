"""Typed configuration, by concern:

- settings.py: `setting(default, help, choices, bounds=..., resume=...)`, how every setting is declared, and Bounds;
- evaluators.py, schema.py: the sections (dataclasses), the walk over them and each key's resume policy;
- migrations.py: renamed and retired keys and values (RENAMED, RETIRED, RETIRED_VALUES, upgrade_stored);
- values.py: values written onto the dataclasses strictly (types, did-you-mean), recipes and their base chain;
- validation.py: the generic check of what settings declare, the rules across settings, stages;
- loading.py: load_config (stored values, recipe, --set); commandline.py: --config/--set and the keys' --help;
- derived.py: what follows from a config (objective needs, views per image, backbone facts);
- reference.py: the Markdown configuration reference and changelog (docs/reference/).

The sections of objectives and training methods are declared beside them and registered into every Config.
"""

from ..errors import ConfigError
from .commandline import Keys, add_config_arguments, every_key, recipe_intro, settings_help
from .derived import backbone_facts_of, local_crops, method_sections, objective_needs, views_per_image
from .loading import load_config, parse_override
from .migrations import RENAMED, RETIRED, RETIRED_VALUES, upgrade_stored
from .schema import (
    METHOD_SECTIONS,
    UNLABELLED_DATASETS,
    CollapseConfig,
    Config,
    DataConfig,
    EvalConfig,
    LocalCrops,
    MethodConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    Section,
    registered_sections,
    resume_policy,
    to_dict,
)
from .settings import APPLY, REFUSE, setting
from .validation import MIN_BN_GROUP, stage_configs, validate
from .values import apply_values, read_yaml

__all__ = ["APPLY", "METHOD_SECTIONS", "MIN_BN_GROUP", "REFUSE", "RENAMED", "RETIRED", "RETIRED_VALUES",
           "UNLABELLED_DATASETS", "CollapseConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "Keys",
           "LocalCrops", "MethodConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig", "Section",
           "add_config_arguments", "apply_values", "backbone_facts_of", "every_key", "load_config", "local_crops",
           "method_sections", "objective_needs", "parse_override", "read_yaml", "recipe_intro", "registered_sections",
           "resume_policy", "settings_help", "setting", "stage_configs", "to_dict", "upgrade_stored", "validate",
           "views_per_image"]
