"""The lmms-eval adapters in-process, with lmms-eval's real registry and task objects: registration,
start-up validation of --model_args, and the simple and chat paths building the same prompt."""

import pytest

from pdrop_eval.adapters.lmms import models as adapters
from pdrop_eval.framework_names import FRAMEWORK_NAMES
from pdrop_eval.engine.config import METHODS, DropConfig
from pdrop_eval.package_data import TASKS_DIR

TASKS = TASKS_DIR


def test_models_are_registered_through_the_entry_point():
    from lmms_eval import models

    for model_id, simple in [("llava_next_pdrop", adapters.LlavaNextPDrop), ("llava_fastv", adapters.LlavaFastV),
                             ("llava_next_vanilla", adapters.LlavaNextVanilla), ("llava_random_drop", adapters.LlavaRandomDrop)]:
        assert models.get_model(model_id, force_simple=True) is simple
        chat = models.get_model(model_id)
        assert issubclass(chat, simple) and chat.is_simple is False
        assert FRAMEWORK_NAMES[simple.method].model == model_id
    assert {names.model for names in FRAMEWORK_NAMES.values()} <= set(models.list_available_models())


@pytest.mark.parametrize(
    "model_class, arg_string, cli, message",
    [
        (adapters.LlavaNextPDrop, "pretrained=x,lamda=0.5", {}, "unknown option(s) ['lamda']"),
        (adapters.LlavaNextPDrop, "pretrained=x,fastv_k=2", {}, "PyramidDrop does not take ['fastv_k']"),
        (adapters.LlavaNextPDrop, "pretrained=x,lambda=0.5,lambda=0.4", {}, "--model_args key 'lambda' given twice"),
        (adapters.LlavaNextPDrop, "pretrained=x,layer_list=[8,16,24],lambda=2", {}, "lambda must be in (0, 1]"),
        (adapters.LlavaNextPDrop, "pretrained=x,lambda=0.5,image_token_ratio_list=0.5;0.2;0.1", {}, "got both"),
        (adapters.LlavaFastV, "pretrained=x,fastv_k=2,ratio=0.3", {}, "FastV does not take ['ratio']"),
        (adapters.LlavaRandomDrop, "pretrained=x,seed=-1", {}, "seed must be >= 0"),
        (adapters.LlavaNextPDrop, "pretrained=x,lambda=2", {}, "lambda must be in (0, 1]"),
        (adapters.LlavaNextPDrop, "pretrained=x,layer_list=16;8", {}, "strictly increasing"),
        (adapters.LlavaFastV, "pretrained=x,fastv_r=1.5", {}, "fastv_r"),
        (adapters.LlavaFastV, "pretrained=x,drop_preset=pdrop-0.5", {}, "conflicts with the model's method 'fastv'"),
        (adapters.LlavaNextVanilla, "pretrained=x,layer_list=8", {}, "Vanilla (no drop) does not take ['layer_list']"),
        (adapters.LlavaNextPDrop, "dtype=float32", {}, "give pretrained="),
        (adapters.LlavaNextPDrop, "model_preset=llava-13b", {}, "unknown model preset 'llava-13b'"),
        (adapters.LlavaNextPDrop, "pretrained=x,batch_size=4", {"batch_size": 1}, "['batch_size'] given in --model_args and by lmms-eval"),
        (adapters.LlavaNextPDrop, "pretrained=x", {"batch_size": "auto"}, "batch_size (lmms-eval --batch_size) must be a positive integer"),
        (adapters.LlavaNextPDrop, "pretrained=x,max_new_tokens=0", {}, "max_new_tokens must be a positive integer"),
    ],
)
def test_bad_model_args_fail_at_start_up(model_class, arg_string, cli, message):
    with pytest.raises(ValueError) as error:
        model_class.create_from_arg_string(arg_string, cli)
    assert message in str(error.value)


def test_a_checkpoint_named_like_a_boolean_is_a_clear_error():
    # lmms-eval's own parser would turn "true" into True and fail with a Python type error
    with pytest.raises(FileNotFoundError, match="cannot load checkpoint 'true'"):
        adapters.LlavaNextPDrop.create_from_arg_string("pretrained=true")


@pytest.mark.parametrize(
    "arg_string, expected",
    [
        ("drop_preset=pdrop-0.5,ratio=0.3", DropConfig.pyramid(ratio=0.3)),
        ("drop_preset=pdrop-0.5,lambda=0.3", DropConfig.pyramid(ratio=0.3)),
        ("drop_preset=pdrop-0.4,image_token_ratio_list=[0.5,0.2,0.1]", DropConfig.pyramid(image_token_ratio_list=[0.5, 0.2, 0.1])),
        ("layer_list=[4,8],lambda=0.25", DropConfig.pyramid(layer_list=[4, 8], ratio=0.25)),
    ],
)
def test_explicit_keys_are_parsed_before_the_preset_and_override_it(tiny_llava, arg_string, expected):
    from pdrop_eval.keyvalue import parse_key_values
    from pdrop_eval.options import resolve_model_options

    options = parse_key_values(f"pretrained={tiny_llava},{arg_string}")
    assert resolve_model_options("pyramid", options, owner="test").drop == expected


@pytest.fixture(scope="module")
def tiny_pdrop_models(tiny_llava):
    args = f"pretrained={tiny_llava},dtype=float32,drop_preset=pdrop-0.5,layer_list=4;8"
    return adapters.LlavaNextPDrop.create_from_arg_string(args, {"batch_size": 2}), adapters.LlavaNextPDropChat.create_from_arg_string(args)


def test_explicit_keys_override_the_drop_preset(tiny_pdrop_models):
    simple, _chat = tiny_pdrop_models
    assert simple._drop == DropConfig.pyramid(layer_list=[4, 8], ratio=0.5)
    assert simple.batch_size == 2


def test_simple_and_chat_paths_build_the_same_prompt(tiny_pdrop_models):
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager("ERROR", include_path=str(TASKS))
    prompts = {}
    for model, task_type in zip(tiny_pdrop_models, ("simple", "chat")):
        task = get_task_dict(["pdrop_local_mcq"], manager, task_type)["pdrop_local_mcq"]
        task.build_all_requests(limit=3)
        model.task_dict["pdrop_local_mcq"] = task.dataset
        queries = [model._query(request) for request in task.instances]
        prompts[task_type] = [(model._runner.render(query), [image.tobytes() for image in query.images]) for query in queries]
        settings = {model._generation_settings(request) for request in task.instances}
        assert settings == {(("max_new_tokens", 8), ("num_beams", 1), ("stop", ("\n",)), ("temperature", 0.0))}
    assert prompts["simple"] == prompts["chat"]
    assert "A. circle\nB. square" in prompts["simple"][0][0]


def test_unsupported_generation_settings_name_the_task(tiny_pdrop_models):
    from lmms_eval.api.instance import Instance

    simple, _chat = tiny_pdrop_models
    request = Instance("generate_until", ("ctx", {"top_k": 5}, None, 0, "some_task", "test"), 0,
                       metadata={"task": "some_task", "doc_id": 0, "repeats": 1})
    with pytest.raises(ValueError, match="task 'some_task' sets generation_kwargs \\['top_k'\\]"):
        simple.generate_until([request])


def test_lmms_eval_runs_on_cpu_torch_without_a_start_up_shim(tmp_path):
    """Here torchvision is PyPI's CUDA build beside a CPU torch (as on any CPU machine that installs it):
    plain lmms-eval dies importing it; the runner the README gives for CPU machines gets as far as our
    own check of the model options."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no cpu_startup shim
    args = ["--model", "llava_next_pdrop", "--model_args", f"pretrained={tmp_path / 'missing'}", "--tasks", "pdrop_local_vqa",
            "--include_path", str(TASKS)]

    def run(module: str) -> str:
        completed = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        return completed.stdout + completed.stderr

    if "operator torchvision::nms does not exist" not in run("lmms_eval"):
        pytest.skip("torchvision imports on this machine: nothing to work around")
    output = run("pdrop_eval.adapters.lmms")
    assert f"checkpoint folder {tmp_path / 'missing'} does not exist" in output and "torchvision::nms" not in output


def test_readme_runs_lmms_eval_on_cpu_through_the_runner():
    """Wherever the README runs lmms-eval on a CPU (--device cpu, or the shipped pdrop_synth models), the
    command goes through `python -m pdrop_eval.adapters.lmms`, and the error it avoids is quoted there."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    commands = re.findall(r"^(?:[^\n]*\\\n)*[^\n]*$", readme, flags=re.MULTILINE)  # lines joined at trailing backslashes
    runs_lmms_eval = [command for command in commands if re.search(r"(^|\s)lmms-eval\s|-m lmms_eval\b|-m pdrop_eval\.adapters\.lmms\b", command)]
    on_cpu = [command for command in runs_lmms_eval if "--device cpu" in command or "pdrop-synth-" in command]
    assert on_cpu, "the README shows no lmms-eval command for a CPU"
    for command in on_cpu:
        assert "-m pdrop_eval.adapters.lmms" in command, command
    assert "operator torchvision::nms does not exist" in readme
