"""The framework model names of every line of model families: the README's table, registration in both
frameworks, a checkpoint of another line stopped at start-up naming the right model, and each line's
prompts built as the framework's own model of the family builds them (in-process, real lmms-eval task
objects and VLMEvalKit datasets)."""

import subprocess
import sys
import re
from pathlib import Path

import pytest

from pdrop_eval.engine.config import METHODS
from pdrop_eval.framework_names import ALL_NAMES, LMMS_EVAL, MODEL_LINES, VLMEVAL
from pdrop_eval.package_data import TASKS_DIR

README = Path(__file__).parents[1] / "README.md"
TINY_LIMITS = "min_pixels=256,max_pixels=16384"  # the tiny Qwen2.5-VL's own pixel range: 2x2 to 16x16 tokens
QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def readme_model_table() -> list[list[str]]:
    text = README.read_text()
    table = text[text.index("<!-- model-names:"):].split("\n\n")[0].splitlines()[3:]  # marker, header, rule
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in table]


def test_readme_table_lists_every_model_name():
    rows = {}
    for lmms_name, vlmeval_cell, checkpoints, method in readme_model_table():
        vlmeval_name, vlmeval_class = re.fullmatch(r"`(.+)` \(`(.+)`\)", vlmeval_cell).groups()
        rows[lmms_name.strip("`")] = (vlmeval_name, vlmeval_class, checkpoints, method)
    assert set(rows) == {names.model for names in ALL_NAMES}
    for names in ALL_NAMES:
        vlmeval_name, vlmeval_class, checkpoints, method = rows[names.model]
        assert (vlmeval_name, vlmeval_class, checkpoints) == (names.framework_model(VLMEVAL), names.vlmeval_class, names.line.title)
        assert method.startswith(METHODS[names.method].title), names.model


def test_names_are_distinct_and_registered_in_both_frameworks():
    from lmms_eval import models

    from pdrop_eval.adapters import vlmeval
    from pdrop_eval.adapters.lmms import models as adapters

    for framework in (LMMS_EVAL, VLMEVAL):
        assert len({names.framework_model(framework) for names in ALL_NAMES}) == len(ALL_NAMES)
    assert len({(names.line, names.method) for names in ALL_NAMES}) == len(ALL_NAMES)
    assert {family for line in MODEL_LINES for family in line.families} >= {"llava", "llava_next", "qwen2_5_vl", "llava_onevision"}
    for names in ALL_NAMES:
        simple = models.get_model(names.model, force_simple=True)
        assert simple is getattr(adapters, names.lmms_class) and (simple.method, simple.names) == (names.method, names)
        assert models.get_model(names.model).is_simple is False
        assert vlmeval.MODELS[names.framework_model(VLMEVAL)].NAMES is names
    assert [names.model for names in ALL_NAMES if names.line.title == "Qwen2.5-VL"] == [
        "qwen2_5_vl_vanilla", "qwen2_5_vl_fastv", "qwen2_5_vl_pdrop", "qwen2_5_vl_dart", "qwen2_5_vl_random_drop"]


@pytest.mark.parametrize("model, checkpoint, message", [
    ("llava_next_pdrop", "qwen", "llava_next_pdrop takes LLaVA-1.5 / LLaVA-NeXT checkpoints; this is a Qwen2.5-VL checkpoint: use --model qwen2_5_vl_pdrop"),
    ("qwen2_5_vl_fastv", "llava", "qwen2_5_vl_fastv takes Qwen2.5-VL checkpoints; this is a LLaVA-1.5 checkpoint: use --model llava_fastv"),
    ("qwen2_5_vl_random_drop", "onevision", "this is a LLaVA-OneVision checkpoint: use --model llava_onevision_random_drop"),
    ("llava_onevision_pdrop", "llava_next", "this is a LLaVA-NeXT checkpoint: use --model llava_next_pdrop"),
    ("llava_visionzip", "qwen", "this is a Qwen2.5-VL checkpoint, and 'visionzip' has no model for it (its models: qwen2_5_vl_dart, "),
])
def test_a_checkpoint_of_another_line_stops_at_start_up(model, checkpoint, message, request, monkeypatch):
    from lmms_eval import models

    from pdrop_eval import wrapper

    folder = request.getfixturevalue({"qwen": "tiny_qwen2_5_vl", "llava": "tiny_llava", "llava_next": "tiny_llava_next",
                                      "onevision": "tiny_llava_onevision"}[checkpoint])
    monkeypatch.setattr(wrapper.ModelRunner, "load", None)  # stopped before any weights load
    with pytest.raises(ValueError, match=re.escape(message)):
        models.get_model(model).create_from_arg_string(f"pretrained={folder}")


def test_vlmeval_names_the_vlmeval_model_and_class(tiny_qwen2_5_vl):
    from pdrop_eval.adapters import vlmeval

    with pytest.raises(ValueError, match=re.escape("this is a Qwen2.5-VL checkpoint: use --model Qwen2.5-VL-FastV (--config class Qwen2_5_VLFastV)")):
        vlmeval.MODELS["llava_fastv"].check_options(pretrained=str(tiny_qwen2_5_vl))


@pytest.mark.parametrize("model, arg_string, message", [
    ("qwen2_5_vl_pdrop", "interleave_visuals=True", "['interleave_visuals'] are options of lmms-eval's qwen2_5_vl model"),
    ("llava_onevision_fastv", "conv_template=qwen_2", "['conv_template'] are options of lmms-eval's llava_onevision model"),
    ("qwen2_5_vl_fastv", "min_pixels=4096,max_pixels=1024", "min_pixels=4096 exceeds max_pixels=1024"),
    ("llava_next_pdrop", "min_pixels=4096", "unknown option(s) ['min_pixels']"),
])
def test_framework_options_of_the_family_are_taken_or_refused_by_name(model, arg_string, message, tiny_qwen2_5_vl):
    from lmms_eval import models

    with pytest.raises(ValueError, match=re.escape(message)):
        models.get_model(model).create_from_arg_string(f"pretrained={tiny_qwen2_5_vl},{arg_string}")


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager("ERROR", include_path=str(TASKS_DIR), include_defaults=False)  # lmms-eval's own tasks are not needed


def _lmms_prompts(task_manager, model_id: str, arg_string: str, task_name: str) -> tuple[dict, list]:
    """Per request path: the rendered prompt and image count of the task's first two documents; their contexts."""
    from lmms_eval import models
    from lmms_eval.tasks import get_task_dict

    prompts = {}
    for path in ("simple", "chat"):
        model = models.get_model(model_id, force_simple=path == "simple").create_from_arg_string(arg_string)
        task = get_task_dict([task_name], task_manager, path)[task_name]
        task.build_all_requests(limit=2)
        model.task_dict[task_name] = task.dataset
        prompts[path] = [(model._runner.render(model._query(request)), len(model._query(request).images)) for request in task.instances]
        contexts = [request.args[0] for request in task.instances]
    return prompts, contexts


def test_lmms_qwen_prompts_follow_lmms_evals_qwen2_5_vl(task_manager, tiny_qwen2_5_vl):
    prompts, contexts = _lmms_prompts(task_manager, "qwen2_5_vl_vanilla", f"pretrained={tiny_qwen2_5_vl},dtype=float32,{TINY_LIMITS}", "pdrop_local_vqa")
    expected = [(f"{QWEN_SYSTEM}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{context}<|im_end|>\n<|im_start|>assistant\n", 1)
                for context in contexts]
    assert prompts["simple"] == prompts["chat"] == expected


def test_lmms_onevision_prompts_follow_the_qwen_1_5_conversation(task_manager, tiny_llava_onevision):
    prompts, contexts = _lmms_prompts(task_manager, "llava_onevision_vanilla", f"pretrained={tiny_llava_onevision},dtype=float32", "pdrop_local_vqa")
    expected = [(f"{QWEN_SYSTEM}<|im_start|>user\n<image>\n{context}<|im_end|>\n<|im_start|>assistant\n", 1) for context in contexts]
    assert prompts["simple"] == prompts["chat"] == expected


def test_lmms_qwen_pixel_range_placeholders_and_stop_strings(tiny_qwen2_5_vl):
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from pdrop_eval.adapters.lmms import models as adapters

    model = adapters.Qwen2_5_VLVanilla.create_from_arg_string(f"pretrained={tiny_qwen2_5_vl},dtype=float32,min_pixels=1024,max_pixels=4096")
    size = model._runner.processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (1024, 4096)
    # an <image> placeholder in the context is removed and the picture goes first, as in lmms-eval's qwen2_5_vl
    model.task_dict["some_task"] = {"test": [{"picture": Image.new("RGB", (32, 32))}]}
    query = model._query_from_context("Look at <image> and answer.", lambda doc: [doc["picture"]], 0, "some_task", "test")
    assert query.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Look at  and answer."}]
    request = Instance("generate_until", ("ctx", {"until": ["\n\n", "Q:"]}, None, 0, "some_task", "test"), 0,
                       metadata={"task": "some_task", "doc_id": 0, "repeats": 1})
    assert dict(model._generation_settings(request))["stop"] == ("Q:",)  # lmms-eval's qwen2_5_vl never stops at "\n\n"


@pytest.fixture(scope="module")
def toy_mcq(tmp_path_factory):
    from pdrop_eval.adapters.vlmeval_data import TOY_MCQ, make_toy_datasets

    folder = tmp_path_factory.mktemp("LMUData_names")
    make_toy_datasets(folder, count=2)
    return folder, TOY_MCQ


@pytest.mark.parametrize("model_name, fixture, expected", [
    ("Qwen2.5-VL-Vanilla", "tiny_qwen2_5_vl", "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"),
    ("llava_onevision_vanilla", "tiny_llava_onevision", "<|im_start|>user \n<image>\n{text}<|im_end|><|im_start|>assistant\n"),
])
def test_vlmeval_prompts_follow_vlmevals_own_models(model_name, fixture, expected, toy_mcq, request, monkeypatch):
    """Qwen2VLChat (as VLMEvalKit's Qwen2.5-VL entries set it) and LLaVA_OneVision_HF: the dataset's own
    multiple-choice prompt, in the checkpoint's chat template (the tiny templates lack a default system turn)."""
    from vlmeval.dataset import build_dataset

    from pdrop_eval.adapters import vlmeval
    from pdrop_eval.wrapper import Query

    folder, dataset_name = toy_mcq
    monkeypatch.setenv("LMUData", str(folder))
    model_class = vlmeval.MODELS[model_name]
    model = model_class(pretrained=str(request.getfixturevalue(fixture)), dtype="float32", max_new_tokens=1,
                        **({"min_pixels": 256, "max_pixels": 16384} if "Qwen" in model_name else {}))
    dataset = build_dataset(dataset_name)
    model.set_dump_image(dataset.dump_image)
    line = dataset.data.iloc[0]
    message = model.build_prompt(line, dataset=dataset_name)
    assert message == dataset.build_prompt(line)  # not VLMEvalKit's LLaVA prompt
    (text,) = [item["value"] for item in message if item["type"] == "text"]
    query = Query.from_parts(vlmeval._message_parts(message, model.CONVENTION.text_joiner))
    assert model.runner.render(query) == expected.format(text=text)


def test_importing_the_vlmeval_adapter_leaves_autograd_on():
    """Importing VLMEvalKit turns autograd off process-wide; training or gradient checks run later in the
    same process (a test session) would silently compute no gradients. A fresh process, so the import is real."""
    code = "import torch; from pdrop_eval.adapters import vlmeval; vlmeval.register_models(); print(torch.is_grad_enabled())"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == "True"
