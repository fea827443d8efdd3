"""What the command line tells a user: every --help says what the command does, and a refusal names the
flag the user can still change."""

from types import SimpleNamespace

import pytest

from pdrop_eval import cli


def test_help_describes_the_tool_and_every_command(capsys):
    def help_text(argv) -> str:
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        return capsys.readouterr().out

    description = cli.build_parser().description
    # not the module's docstring for developers, cut at its first line break
    assert description.endswith(".") and "subcommand" not in description and description in " ".join(help_text([]).split())
    for module in cli.COMMAND_MODULES:  # argparse shows a command's help line in the list of commands only
        name = module.rsplit(".", 1)[1].replace("_", "-")
        after_usage = help_text([name]).split("\n\n")[1]
        assert not after_usage.startswith(("options:", "positional arguments:")), f"pdrop-eval {name} --help has no description"


def test_show_run_does_not_ask_for_the_task_it_was_given(tmp_path, monkeypatch):
    """The same document of the same task in two runs: --task cannot tell them apart, --run can."""
    from pdrop_eval import stats
    from pdrop_eval.commands.show import _find_sample

    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / f"x{stats.FILE_SUFFIX}").write_text("{}")
    record = SimpleNamespace(samples=[SimpleNamespace(task="pdrop_synth", doc_id=3)])
    monkeypatch.setattr(stats, "read_run_stats", lambda path: record)
    with pytest.raises(ValueError, match=r"document 3 of task pdrop_synth is in several runs .*; pick one with a narrower --run$"):
        _find_sample(tmp_path, "3", "pdrop_synth")
    with pytest.raises(ValueError, match=r"; pick one with --task or a narrower --run$"):
        _find_sample(tmp_path, "3", None)
