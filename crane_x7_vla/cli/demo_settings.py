"""The demo's settings per backend and task: one YAML file each in crane_x7_vla/configs/demo/
(`{backend}_{task}.yaml`), read and checked here. A flag of `crane-x7-vla demo` wins over the
file's value; `demo --defaults FILE` reads another file of the same form."""

from __future__ import annotations

from pathlib import Path

from crane_x7_vla.errors import ConfigError

DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"

# section -> setting -> (accepted Python types, what the value must be, in words)
_NUMBER = ((int, float), "a number")
_WHOLE = ((int,), "a whole number")
SCHEMA = {
    "collect": {"episodes": _WHOLE, "start_near": _NUMBER},
    "pretrain": {"steps": _WHOLE, "scenes": _WHOLE, "answer_steps": _WHOLE},
    "train": {"steps": _WHOLE, "batch_size": _WHOLE, "learning_rate": _NUMBER, "image_size": ((str,), "WxH text"),
              "freeze_vision": ((bool,), "true or false"), "goal_scenes": _WHOLE, "goal_scenes_alone": _NUMBER,
              "goal_scenes_near": _NUMBER, "goal_warmup_steps": _WHOLE,
              "goal_warmup_lr": ((int, float, type(None)), "a number or null"),
              "args": ((list,), "a list of command-line words")},
    "eval": {"episodes": _WHOLE, "timeout": _NUMBER},
}


def defaults_file(backend: str, task: str) -> Path:
    return DEMO_CONFIGS / f"{backend}_{task}.yaml"


def load_settings(path) -> dict:
    """{section: {setting: value}} of a demo settings file; every setting must be there with a
    value of its kind (a ConfigError names the file and the setting)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"demo settings {path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"demo settings {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"demo settings {path}: expected the sections {', '.join(SCHEMA)}")
    unknown = sorted(set(data) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"demo settings {path}: unknown section(s) {', '.join(unknown)} "
                          f"(sections: {', '.join(SCHEMA)})")
    out = {}
    for section, settings in SCHEMA.items():
        given = data.get(section)
        if not isinstance(given, dict):
            raise ConfigError(f"demo settings {path}: section '{section}' is missing "
                              f"(it holds {', '.join(settings)})")
        extra = sorted(set(given) - set(settings))
        if extra:
            raise ConfigError(f"demo settings {path}: {section}.{extra[0]} is not a setting of the demo "
                              f"({section} holds {', '.join(settings)})")
        out[section] = {}
        for name, (types, words) in settings.items():
            if name not in given:
                raise ConfigError(f"demo settings {path}: {section}.{name} is missing")
            value = given[name]
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                raise ConfigError(f"demo settings {path}: {section}.{name} must be {words} (got {value!r})")
            out[section][name] = [str(v) for v in value] if isinstance(value, list) else value
    return out
