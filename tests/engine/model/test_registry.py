import pytest

from napari_sam.engine.model import DEFAULT_MODEL
from napari_sam.engine.model.downloads import file_sha256
from napari_sam.engine.model.registry import MODELS, get_model_spec
from napari_sam.errors import UnknownModelError


def test_registry_entries_are_complete():
    assert DEFAULT_MODEL == "vit_t" and set(MODELS) == {
        "vit_t",
        "lite_medsam",
        "vit_b",
        "vit_l",
        "vit_h",
    }
    for name, spec in MODELS.items():
        assert spec.name == name
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert spec.size > 0 and spec.filename
        assert spec.urls or spec.packages  # somewhere to fetch it from
        assert spec.model_id == f"{name}@{spec.sha256[:12]}"


def test_default_model_entry_describes_the_released_file(default_weights):
    spec = MODELS[DEFAULT_MODEL]
    assert default_weights.name == spec.filename
    assert default_weights.stat().st_size == spec.size  # the download progress bar's total
    assert file_sha256(default_weights) == spec.sha256


def test_get_model_spec_by_name():
    assert get_model_spec("vit_b") is MODELS["vit_b"]


@pytest.mark.parametrize(
    ("filename", "architecture"),
    [
        ("my_mobile_sam.pt", "vit_t"),
        ("finetuned_vit_b_lm.pth", "vit_b"),
        ("VIT_H-cells.pt", "vit_h"),
        ("lite_medsam_v2.pth", "lite_medsam"),
    ],
)
def test_checkpoint_file_architecture_guessed_from_its_name(tmp_path, filename, architecture):
    path = tmp_path / filename
    path.write_bytes(b"12345")
    spec = get_model_spec(path)
    assert spec.architecture == MODELS[architecture].architecture
    assert spec.path == path and spec.size == 5 and spec.sha256 == ""
    assert spec.name == path.stem and spec.model_id == path.stem
    assert not spec.urls and not spec.packages


def test_checkpoint_file_with_explicit_architecture(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"x")
    assert (
        get_model_spec(str(path), architecture="vit_l").architecture == MODELS["vit_l"].architecture
    )


def test_unknown_model_name():
    with pytest.raises(
        UnknownModelError,
        match=r"Unknown model 'vit_q': .*\(vit_t, lite_medsam, vit_b, vit_l, vit_h\)",
    ):
        get_model_spec("vit_q")


def test_unknown_model_error_is_a_key_error_with_a_plain_message():
    with pytest.raises(KeyError) as caught:
        get_model_spec("nope")
    assert str(caught.value).startswith("Unknown model 'nope'")


def test_checkpoint_file_of_unknown_architecture(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"x")
    with pytest.raises(
        UnknownModelError,
        match=r"Cannot tell the architecture of checkpoint .*weights.pt: pass architecture=",
    ):
        get_model_spec(path)


def test_checkpoint_file_with_unknown_architecture_name(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"x")
    with pytest.raises(UnknownModelError, match="Cannot tell the architecture"):
        get_model_spec(path, architecture="vit_z")
