import subprocess
import sys


def test_training_never_imports_the_gui_stack():
    code = (
        "import sys, napari_sam.training.loop, napari_sam.training.evaluation, "
        "napari_sam.training.annotations, napari_sam.commands.training; "
        "print(sorted(m for m in ('napari', 'qtpy', 'magicgui', 'PyQt5', 'PyQt6') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
