"""The README's commands still compose: every ``python -m nucleiseg.<entry> ...`` it shows (in
code blocks and inline code) is composed with Hydra against conf/, without training, so a
renamed key or group fails the suite."""

from __future__ import annotations

import importlib.util
import itertools
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import CONF_DIR, ROOT

README = ROOT / "README.md"
#: entry points that parse their arguments with argparse, not Hydra
ARGPARSE_ENTRIES = {"nucleiseg.report", "nucleiseg.data.download"}


def readme_commands() -> list[str]:
    """Every ``python -m nucleiseg...`` command of the README, continuation lines joined and
    trailing comments dropped."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("python -m nucleiseg"):
                commands.append(line)
    for span in re.findall(r"`(python -m nucleiseg[^`]*)`", text):
        commands.append(span.strip())
    return commands


def config_name(entry: str) -> str:
    source = Path(importlib.util.find_spec(entry).origin)
    found = re.search(r'config_name="(\w+)"', source.read_text())
    assert found, f"{entry} has no @hydra.main(config_name=...)"
    return found.group(1)


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """One override list per job a multirun would launch (at most 8), or the list itself."""
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([text])
    return [list(c) for c in itertools.islice(itertools.product(*choices), 8)]


COMMANDS = readme_commands()


def test_the_readme_shows_the_main_commands():
    entries = {shlex.split(c)[2] for c in COMMANDS}
    assert {"nucleiseg.train", "nucleiseg.predict", "nucleiseg.evaluate"} <= entries
    assert any("dataset=lizard,tnbc backbone=unet,micronet,unetpp" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_composes(command: str):
    words = shlex.split(command)
    entry, args = words[2], words[3:]
    assert importlib.util.find_spec(entry) is not None, f"no module {entry}"
    if entry in ARGPARSE_ENTRIES:
        return  # its arguments are positional paths and flags, checked by its own tests
    multirun = "-m" in args or "--multirun" in args
    if "--cfg" in args:  # `--cfg job` prints the composition: compose the rest
        index = args.index("--cfg")
        args = args[:index] + args[index + 2 :]
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    assert all("=" in o for o in overrides), f"not an override in: {command}"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for job in expand(overrides, multirun):
            compose(config_name(entry), overrides=job, return_hydra_config=True)
