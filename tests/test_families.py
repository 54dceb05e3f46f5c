"""Model families and presets: the name syntax, its validation everywhere a name enters, published sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.contract import ContractError, TrialSpec
from harness.plan import Overrides, expand
from harness.spec import SpecError, SuiteSpec, load_suite
from tests.conftest import harness_in_process
from workloads.architectures import ARCHITECTURES, canonical, families, get

# parameter counts as the references publish them (exact counts; the papers round them)
PUBLISHED = {
    "resnet20": 269_722,  # He et al. (2016) table 6: 0.27M
    "resnet32": 464_154,  # 0.46M
    "resnet56": 853_018,  # 0.85M
    "resnet110": 1_727_962,  # 1.7M
    "resnet50": 25_557_032,  # torchvision
    "resnet101": 44_549_160,  # torchvision
    "gpt2_small": 124_439_808,  # tied head, 1024 positions
    "gpt2_medium": 354_823_168,
    "vit_b16": 86_567_656,  # 224x224, 1000 classes (timm)
    "vit_s16": 22_050_664,
}


@pytest.mark.parametrize(("name", "count"), PUBLISHED.items())
def test_presets_have_the_published_parameter_counts(name: str, count: int) -> None:
    arch = get(name)
    assert arch.param_count() == count
    assert arch.published_params in (None, count)


def test_every_preset_with_a_published_count_is_checked() -> None:
    published = {n for n, p in families.PRESETS.items() if p.published_params is not None}
    assert published <= set(PUBLISHED)


def test_family_defaults_are_the_presets_they_name() -> None:
    assert get("resnet").param_count() == PUBLISHED["resnet50"]
    assert get("decoder").param_count() == PUBLISHED["gpt2_small"]
    assert get("vit").param_count() == PUBLISHED["vit_b16"]
    assert get("resnet_cifar").param_count() == get("resnet20").param_count()
    # the zoo's mlp_deep is mlp's default member: same layers, same canonical weights
    assert get("mlp").layers == get("mlp_deep").layers
    a, b = get("mlp").init_variables(3), get("mlp_deep").init_variables(3)
    assert all((a[k] == b[k]).all() for k in a)


def test_bert_base_is_sized_like_bert() -> None:
    arch = get("bert_base")
    blocks = [layer for layer in arch.layers if type(layer).__name__ == "TransformerBlock"]
    assert len(blocks) == 12 and arch.input_shape == (512,) and arch.vocab_size == 30522
    # BERT-base is 110M with token types, embedding LayerNorm and pooler, which this encoder leaves out
    assert 105e6 < arch.param_count() < 112e6


def test_sized_members_follow_their_keys() -> None:
    deep = get("mlp[depth=16,width=512]")
    assert sum(type(x).__name__ == "Dense" for x in deep.layers) == 17
    assert deep.param_count() == 40 * 512 + 512 + 15 * (512 * 512 + 512) + 512 * 10 + 10
    assert get("gpt2_small[seq=256]").input_shape == (256,)
    # fewer positions: 768 fewer parameters per position dropped
    assert get("gpt2_small").param_count() - get("gpt2_small[seq=256]").param_count() == (1024 - 256) * 768
    assert get("resnet_cifar[n=5]").param_count() == PUBLISHED["resnet32"]
    assert get("resnet[depth=50,width=8,image=32,classes=10]").input_shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("mlp[width=512,depth=16]", "mlp[depth=16,width=512]"),
        (" mlp[ depth = 16 , width=512 ] ", "mlp[depth=16,width=512]"),
        ("mlp[depth=8]", "mlp"),  # a default dropped
        ("gpt2_small[seq=1024]", "gpt2_small"),  # the preset's own value dropped
        ("gpt2_small[seq=256]", "gpt2_small[seq=256]"),
        ("resnet50", "resnet50"),
        ("mlp_deep", "mlp_deep"),
        ("mlp[]", "mlp"),
    ],
)
def test_one_spelling_per_model(given: str, expected: str) -> None:
    assert canonical(given) == expected
    assert get(given).name == expected


def test_the_same_model_is_the_same_trial_key() -> None:
    a = TrialSpec(architecture="mlp[width=64,depth=2]", framework="torch", mode="train", batch_size=8, threads=1)
    b = TrialSpec(architecture="mlp[depth=2,width=64]", framework="torch", mode="train", batch_size=8, threads=1)
    assert a.architecture == "mlp[depth=2,width=64]" and a.trial_key == b.trial_key
    assert a.name == "mlp[depth=2,width=64]-torch-train"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("mlp[depht=3]", ["unknown key 'depht' for mlp", "depth, width, input, classes"]),
        ("mlp[depth=x]", ["depth must be an integer"]),
        ("mlp[depth=-1]", ["depth must be an integer >= 0"]),
        ("mlp[depth=2,depth=3]", ["given twice"]),
        ("mlp[depth]", ["write key=value"]),
        ("resnet[depth=34]", ["depth must be one of 14, 26, 50, 101, 152"]),
        ("encoder[d_model=100,heads=12]", ["not divisible by 12 heads"]),
        ("vit[patch=15]", ["not a multiple of the patch size"]),
        ("logreg[depth=2]", ["logreg takes no keys", "mlp[depth=8"]),
        ("resnet9000", ["unknown architecture 'resnet9000'", "resnet50", "mlp[depth,width,input,classes]"]),
        ("mlp[depth=2", ["bad architecture name"]),
    ],
)
def test_bad_names_say_what_is_valid(name: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        get(name)
    for w in words:
        assert w in str(err.value)
    with pytest.raises(ContractError, match="architecture"):
        TrialSpec(architecture=name, framework="torch", mode="train", batch_size=8, threads=1)


def test_zoo_names_are_unchanged() -> None:
    for name, arch in ARCHITECTURES.items():
        assert get(name) is arch and canonical(name) == name


def _suite(**changes: object) -> SuiteSpec:
    data: dict[str, object] = {"name": "t", "frameworks": ["torch"], "architectures": ["logreg"], "batch_sizes": [8]}
    return SuiteSpec.model_validate(data | changes)


def test_suites_take_sized_names_and_precisions(tmp_path: Path) -> None:
    path = tmp_path / "sized.toml"
    path.write_text(
        'frameworks = ["torch", "jax"]\narchitectures = ["mlp[width=32,depth=2]", "resnet_cifar[n=1]"]\n'
        'modes = ["infer"]\nbatch_sizes = [4]\nprecisions = ["float32", "bfloat16"]\n'
    )
    suite = load_suite(str(path))
    assert suite.architectures == ["mlp[depth=2,width=32]", "resnet_cifar[n=1]"]
    plan = expand(suite, Overrides(), default_threads=1)
    cells = plan.trials + [s for s, _ in plan.skipped]
    assert len(cells) == 2 * 2 * 2
    assert {s.precision for s in cells} == {"float32", "bfloat16"}
    assert any(s.name == "mlp[depth=2,width=32]-jax-infer-bfloat16" for s in cells)
    # the older single key still reads
    assert _suite(precision="bfloat16").precisions == ["bfloat16"]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"architectures": ["mlp[width=0]"]}, "width must be an integer >= 1"),
        ({"precisions": ["float8"]}, "unknown precision 'float8'; choose from float32, bfloat16, float16"),
        ({"precision": "float32", "precisions": ["float32"]}, "either precision or precisions"),
    ],
)
def test_bad_suite_values_name_the_valid_ones(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        _suite(**changes)


def test_command_line_overrides_validate_sized_names() -> None:
    suite = _suite()
    with pytest.raises(SpecError, match="valid keys: depth, width, input, classes"):
        expand(suite, Overrides(architectures=["mlp[wdith=3]"]), default_threads=1)
    with pytest.raises(SpecError, match="unknown precision"):
        expand(suite, Overrides(precisions=["fp8"]), default_threads=1)
    plan = expand(suite, Overrides(architectures=["mlp[width=16,depth=1]"], precisions=["bfloat16"]), 1)
    assert {s.architecture for s in plan.trials + [s for s, _ in plan.skipped]} == {"mlp[depth=1,width=16]"}


def test_cli_dry_run_takes_sized_names_and_rejects_bad_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ("run", "smoke", "--dry-run", "--framework", "torch", "--mode", "infer")
    r = harness_in_process(
        monkeypatch, capsys, tmp_path, *args, "--arch", "mlp[depth=2,width=8],gpt2_small[seq=16,layers=1]"
    )
    assert r.code == 0, r.stderr
    assert "mlp[depth=2,width=8]-torch-infer" in r.stdout and "gpt2_small[layers=1,seq=16]-torch-infer" in r.stdout
    r = harness_in_process(monkeypatch, capsys, tmp_path, *args, "--arch", "vit[patchsize=8]")
    assert r.code == 2 and "valid keys: patch, layers, d_model" in r.stderr and "nothing was run" not in r.stdout
    r = harness_in_process(monkeypatch, capsys, tmp_path, *args, "--precision", "half")
    assert r.code == 2 and "choose from float32, bfloat16, float16" in r.stderr
