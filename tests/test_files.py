"""The one file writer and the ONNX model artifact: what every stage relies on when it reads and writes files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from danet_deploy.errors import BadInputError
from danet_deploy.files import atomic_path, check_output, write_json
from danet_deploy.onnx_export import META_PRECISION, InputSpec, OnnxModel, Precision, write_metadata

from .conftest import TINY


def test_output_equal_to_an_input_is_refused_by_path_symlink_and_hard_link(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"weights")
    (tmp_path / "link.onnx").symlink_to(source)
    os.link(source, tmp_path / "hard.onnx")
    for output in (source, tmp_path / "sub" / ".." / "model.onnx", tmp_path / "link.onnx", tmp_path / "hard.onnx"):
        with pytest.raises(BadInputError, match="also an input"):
            check_output(output, [source])
    assert source.read_bytes() == b"weights"
    assert check_output(tmp_path / "new" / "out.onnx", [source]) == tmp_path / "new" / "out.onnx"


def test_unwritable_destinations_are_refused_before_work(tmp_path: Path) -> None:
    a_file = tmp_path / "hostname"
    a_file.write_text("x")
    with pytest.raises(BadInputError, match="not a folder"):
        check_output(a_file / "x.onnx")
    with pytest.raises(BadInputError, match="is a folder"):
        check_output(tmp_path)
    if Path("/proc/self").is_dir():  # root may "access" /proc, but no file can be created there
        with pytest.raises(BadInputError, match="cannot write to folder /proc"):
            check_output("/proc/x.onnx")


def test_atomic_writes_honour_the_umask_and_leave_nothing_on_failure(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        path = write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise exc
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]  # no temp files left


def _tiny_graph(path: Path, elem: int = TensorProto.FLOAT, dims: tuple = ("n", 3, 64, 128)) -> Path:
    x = helper.make_tensor_value_info("image", elem, list(dims))
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_input_spec_is_read_from_the_graph(tmp_path: Path) -> None:
    spec = OnnxModel.load(_tiny_graph(tmp_path / "a.onnx")).input_spec
    assert spec == InputSpec("image", ("logits",), "NCHW", "float32", None, 64, 128)
    assert spec.static_size == (64, 128) and spec.shape(2, (8, 16)) == [2, 3, 8, 16]
    u8 = OnnxModel.load(_tiny_graph(tmp_path / "b.onnx", TensorProto.UINT8, (1, "h", "w", 3))).input_spec
    assert u8.uint8 and u8.static_size is None and u8.size_or((32, 48)) == (32, 48)
    image = np.zeros((32, 48, 3), np.uint8)
    assert u8.prepare(image, TINY).shape == (1, 32, 48, 3) and spec.prepare(image, TINY).shape == (1, 3, 32, 48)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(BadInputError, match="rank 2"):
        OnnxModel.load(_tiny_graph(tmp_path / "c.onnx", dims=(1, 4)))


def test_precision_comes_from_our_metadata_before_the_graph(tmp_path: Path) -> None:
    path = _tiny_graph(tmp_path / "a.onnx")
    foreign = OnnxModel.load(path)
    assert (foreign.precision, foreign.precision_source) == (Precision.FP32, "graph")
    proto = onnx.load(str(path))
    write_metadata(proto, {META_PRECISION: {"precision": "int8"}})
    onnx.save(proto, str(path))
    ours = OnnxModel.load(path)
    assert (ours.precision, ours.precision_source) == (Precision.INT8, "metadata")
    with pytest.raises(BadInputError, match="no danet-deploy model config"):
        _ = ours.config
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(BadInputError, match=r"bad\.onnx: not a readable ONNX model"):
        OnnxModel.load(tmp_path / "bad.onnx")


def test_a_full_disk_names_the_file_as_bad_input(tmp_path: Path) -> None:
    import errno

    from danet_deploy import files
    from danet_deploy.errors import BadInputError

    full = r"out\.onnx: cannot be written \(No space left on device\)"
    with pytest.raises(BadInputError, match=full), files.atomic_path(tmp_path / "out.onnx") as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert list(tmp_path.iterdir()) == []
    # Another file's error inside the block (a full /tmp during an export) is not blamed on the output.
    with pytest.raises(OSError, match="elsewhere"), files.atomic_path(tmp_path / "out.onnx"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/elsewhere")
