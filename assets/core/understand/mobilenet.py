"""torchvision MobileNetV2 (ImageNet-1k) -> ONNX, without torch (the labels model of assets.core.understand).

Reads torch's *legacy* (pre-1.6, non-zip) checkpoint format with a restricted
unpickler, folds BatchNorm into the convolutions with numpy and builds an
opset-17 ONNX graph that onnxruntime can load straight from bytes.
Imports only numpy, onnx and the standard library (PIL is used by
`preprocess` only through the image object the caller passes in).
"""
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001                 # torch.serialization.PROTOCOL_VERSION
_STORAGE_DTYPES = {                     # torch.<X>Storage -> little-endian dtype
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


def _rebuild_tensor_v2(storage, offset, size, stride, *_ignored):
    """Stand-in for torch._utils._rebuild_tensor_v2: just records the view;
    the storage bytes come after the main pickle, so it is materialised later."""
    return ("tensor", storage, int(offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the handful of globals a legacy state_dict needs; any
    other global (os.system, builtins.eval, ...) is refused, so the file
    cannot run code."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            import collections
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], np.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # old-style storage view: (view_key, offset, size)
            return (pid[1], str(pid[2]), int(view[1]))
        return (pid[1], str(pid[2]), 0)


def load_legacy_state_dict(data: bytes):
    """Return {name: np.ndarray} from the bytes of a legacy torch.save() file (no torch)."""
    with io.BytesIO(data) as f:
        if _RestrictedUnpickler(f).load() != _LEGACY_MAGIC:
            raise ValueError("not a legacy torch file (bad magic number)")
        if _RestrictedUnpickler(f).load() != _LEGACY_PROTOCOL:
            raise ValueError("unsupported legacy protocol version")
        sys_info = _RestrictedUnpickler(f).load()
        if not sys_info.get("little_endian", True):
            raise ValueError("big-endian checkpoints are not supported")
        state = _RestrictedUnpickler(f).load()       # the state_dict itself
        keys = _RestrictedUnpickler(f).load()        # storage keys, in file order
        dtype_of = {}
        for v in state.values():
            if isinstance(v, tuple) and v and v[0] == "tensor":
                dtype_of[v[1][1]] = v[1][0]
        storages = {}
        for key in keys:                             # 8-byte LE count + raw data
            (count,) = struct.unpack("<q", f.read(8))
            dt = dtype_of.get(key, np.dtype("<f4"))
            buf = f.read(count * dt.itemsize)
            if len(buf) != count * dt.itemsize:
                raise ValueError(f"truncated storage {key}")
            storages[key] = np.frombuffer(buf, dtype=dt)
    out = {}
    for name, v in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        if not (isinstance(v, tuple) and v and v[0] == "tensor"):
            raise ValueError(f"{name}: not a tensor")
        (dt, key, view_off), offset, size, stride = v[1], v[2], v[3], v[4]
        flat = storages[key][view_off + offset:]
        extent = 1 + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else 0
        if extent > flat.size or any(st < 0 for st in stride):
            raise ValueError(f"{name}: view exceeds its storage")
        contiguous = tuple(int(np.prod(size[i + 1:])) for i in range(len(size)))
        if tuple(stride) == contiguous or extent == 0:
            arr = flat[:int(np.prod(size))].reshape(size)
        else:
            arr = np.lib.stride_tricks.as_strided(
                flat, shape=size, strides=[s * dt.itemsize for s in stride])
        out[name] = np.array(arr, dtype=dt.newbyteorder("="), order="C")  # owned copy
    return out


# torchvision MobileNetV2 inverted-residual settings: expand t, out c, repeats n, stride s
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def build_model(state):
    """Build the MobileNetV2 (width 1.0) inference graph with BN folded."""
    unused = set(state)
    nodes, inits = [], []

    def take(key):
        if key not in state:
            raise KeyError(f"missing state_dict key {key}")
        unused.discard(key)
        return np.asarray(state[key], dtype=np.float64)

    def conv_bn(x, conv, bn, stride=1, groups=1, relu6=True):
        """Conv (no bias) + BatchNorm(eps 1e-5) folded, optional ReLU6."""
        w = take(conv + ".weight")
        scale = take(bn + ".weight") / np.sqrt(take(bn + ".running_var") + 1e-5)
        b = take(bn + ".bias") - take(bn + ".running_mean") * scale
        w = w * scale[:, None, None, None]
        k, name = w.shape[-1], conv
        inits.append(numpy_helper.from_array(w.astype(np.float32), name + ".w"))
        inits.append(numpy_helper.from_array(b.astype(np.float32), name + ".b"))
        nodes.append(helper.make_node(
            "Conv", [x, name + ".w", name + ".b"], [name + ".y"], name=name,
            kernel_shape=[k, k], strides=[stride, stride], group=groups,
            pads=[k // 2] * 4, dilations=[1, 1]))
        if not relu6:
            return name + ".y"
        nodes.append(helper.make_node("Clip", [name + ".y", "zero", "six"],
                                      [name + ".r"], name=name + ".relu6"))
        return name + ".r"

    inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6, np.float32), "six")]
    x = conv_bn("input", "features.0.0", "features.0.1", stride=2)
    cin, idx = 32, 1
    for t, c, n, s in _SETTINGS:
        for i in range(n):
            stride, p, h, j = (s if i == 0 else 1), f"features.{idx}.conv", x, 0
            hidden = cin * t
            if t != 1:      # 1x1 expansion
                h = conv_bn(h, f"{p}.0.0", f"{p}.0.1"); j = 1
            h = conv_bn(h, f"{p}.{j}.0", f"{p}.{j}.1", stride=stride, groups=hidden)
            h = conv_bn(h, f"{p}.{j + 1}", f"{p}.{j + 2}", relu6=False)  # linear 1x1
            if stride == 1 and cin == c:
                nodes.append(helper.make_node("Add", [x, h], [p + ".add"], name=p + ".add"))
                h = p + ".add"
            x, cin, idx = h, c, idx + 1
    x = conv_bn(x, "features.18.0", "features.18.1")                # 320 -> 1280
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flat", axis=1))
    inits.append(numpy_helper.from_array(take("classifier.1.weight").astype(np.float32), "fc.w"))
    inits.append(numpy_helper.from_array(take("classifier.1.bias").astype(np.float32), "fc.b"))
    # torch Linear weight is [out, in] -> Gemm with transB=1 (dropout = identity)
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"],
                                  name="classifier", transB=1))
    unused = {k for k in unused if not k.endswith("num_batches_tracked")}
    if unused:
        raise ValueError(f"unused state_dict keys: {sorted(unused)}")
    graph = helper.make_graph(
        nodes, "mobilenet_v2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="mobilenet_onnx",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # IR 8 is the version paired with opset 17; ORT loads it
    onnx.checker.check_model(model)
    return model


def convert(pth: bytes) -> bytes:
    """Legacy torchvision .pth bytes -> serialized ONNX bytes (for InferenceSession(bytes))."""
    return build_model(load_legacy_state_dict(pth)).SerializeToString()


# The 1000 ImageNet-1k class names in index order, as torchvision names them (torchvision 0.29.1's
# models/_meta.py, BSD-3-Clause; docs/understanding.md).
CLASSES: list[str] = (Path(__file__).with_name("imagenet_classes.txt")).read_text().splitlines()


MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def preprocess(img):
    """torchvision eval transform: Resize(256, bilinear) -> CenterCrop(224) ->
    ToTensor -> Normalize. Returns CHW float32. Non-RGB images are converted
    to RGB first (torchvision itself would not do that)."""
    from PIL import Image  # the caller already has PIL: it passed us a PIL image
    img = img.convert("RGB") if img.mode != "RGB" else img
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(256 * long / short)          # same rounding as torchvision
    size = (256, new_long) if w <= h else (new_long, 256)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = np.asarray(img, dtype=np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1).astype(np.float32, copy=False)
