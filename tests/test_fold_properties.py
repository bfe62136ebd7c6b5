"""Property-based: random linear layer + BN graphs fold to equal outputs, idempotently, without
growing. Ranks 1-3, groups, kernels, strides, pads, dilations; fp32/fp64/fp16; extreme
statistics (tiny and huge variance, negative gamma). A fold may be refused only for a range
problem (fp16 overflow or subnormals), and then the model must be unchanged."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_helpers import (
    assert_close,
    fold_bytes,
    make_model,
    node_count,
    reasons,
    run,
    tolerance,
)

TYPES = {np.float32: "float", np.float64: "double", np.float16: "float16"}
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _stats(data, rng, c, dtype):
    extreme = data.draw(st.booleans(), label="extreme")
    lo, hi = (-6, 6) if extreme and dtype != np.float16 else (-2, 2)
    gamma = rng.choice([-1.0, 1.0], c) * 10.0 ** rng.uniform(lo / 2, hi / 2, c)
    var = 10.0 ** rng.uniform(lo, hi, c)
    return {
        "gamma": gamma.astype(dtype),
        "beta": rng.normal(0, 1, c).astype(dtype),
        "mean": rng.normal(0, 0.5, c).astype(dtype),
        "var": var.astype(dtype),
    }


def _check(model, feeds, dtype, runner="ort"):
    data = model.SerializeToString()
    folded, result = fold_bytes(data)
    if not result.report.folded:
        assert "would not be exact" in reasons(result), reasons(result)
        assert dtype == np.float16
        return
    assert node_count(onnx.load_from_string(folded)) < node_count(model)
    again, again_result = fold_bytes(folded)
    assert again == folded and not again_result.report.folded
    ref = run(model, feeds, runner)[0]
    got = run(folded, feeds, runner)[0]
    assert_close(ref, got, *tolerance(dtype))


@SETTINGS
@given(data=st.data())
def test_random_conv_bn(data):
    op = data.draw(st.sampled_from(["Conv", "ConvTranspose"]), label="op")
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.float16]), label="dtype")
    rank = data.draw(st.integers(1, 3), label="rank")
    groups = data.draw(st.sampled_from([1, 2, 3]), label="groups")
    if dtype == np.float64 and op == "ConvTranspose":
        groups = 1  # onnx's reference ConvTranspose (used for float64) ignores group
    cin = groups * data.draw(st.integers(1, 2), label="cin/g")
    cout = groups * data.draw(st.integers(1, 3), label="cout/g")
    kernel = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    strides = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    dilations = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [data.draw(st.integers(0, k - 1)) for k in kernel] * 2
    size = max((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)) + 1
    bias = data.draw(st.booleans(), label="bias")
    seed = data.draw(st.integers(0, 2**31), label="seed")
    rng = np.random.default_rng(seed)

    w_shape = (cout, cin // groups, *kernel) if op == "Conv" else (cin, cout // groups, *kernel)
    inits = {"W": rng.normal(0, 0.5, w_shape).astype(dtype)}
    if bias:
        inits["B"] = rng.normal(0, 0.5, cout).astype(dtype)
    inits.update(_stats(data, rng, cout, dtype))
    attrs = f"group={groups}, strides={strides}, dilations={dilations}, pads={pads}"
    if op == "ConvTranspose":
        outpad = [data.draw(st.integers(0, s - 1)) for s in strides]
        attrs += f", output_padding={outpad}"
    ty = TYPES[dtype]
    x_shape = (2, cin, *(size,) * rank)
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g ({ty}[{",".join(map(str, x_shape))}] x) => ({ty} y) {{
          z = {op} <{attrs}> (x, W{", B" if bias else ""})
          y = BatchNormalization <epsilon=0.00001> (z, gamma, beta, mean, var)
        }}""",
        inits,
    )
    feeds = {"x": rng.normal(0, 1, x_shape).astype(dtype)}
    _check(model, feeds, dtype, runner="reference" if dtype == np.float64 else "ort")


@SETTINGS
@given(data=st.data())
def test_random_gemm_matmul_bn(data):
    op = data.draw(st.sampled_from(["Gemm", "MatMul", "MatMulAdd"]), label="op")
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.float16]), label="dtype")
    n, k, m = (data.draw(st.integers(1, 6)) for _ in range(3))
    seed = data.draw(st.integers(0, 2**31), label="seed")
    rng = np.random.default_rng(seed)
    ty = TYPES[dtype]
    inits = _stats(data, rng, m, dtype)
    if op == "Gemm":
        trans_b = data.draw(st.integers(0, 1), label="transB")
        alpha = data.draw(st.sampled_from([1.0, 0.5, -2.0]), label="alpha")
        beta = data.draw(st.sampled_from([1.0, 3.0]), label="beta")
        c_shape = data.draw(st.sampled_from([None, (), (m,), (1, m)]), label="C")
        inits["B"] = rng.normal(0, 0.5, (m, k) if trans_b else (k, m)).astype(dtype)
        args = "a, B"
        if c_shape is not None:
            inits["C"] = rng.normal(0, 1, c_shape).astype(dtype)
            args += ", C"
        body = f"z = Gemm <transB={trans_b}, alpha={alpha}, beta={beta}> ({args})"
    else:
        inits["B"] = rng.normal(0, 0.5, (k, m)).astype(dtype)
        body = "z = MatMul (a, B)"
        if op == "MatMulAdd":
            inits["c"] = rng.normal(0, 1, (m,)).astype(dtype)
            body = "zz = MatMul (a, B)\n z = Add (zz, c)"
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g ({ty}[{n},{k}] a) => ({ty}[{n},{m}] y) {{
          {body}
          y = BatchNormalization <epsilon=0.00001> (z, gamma, beta, mean, var)
        }}""",
        inits,
    )
    _check(model, {"a": rng.normal(0, 1, (n, k)).astype(dtype)}, dtype)


# ------------------------------------------------------------- forward chains (issue 7)

ACTS = {"none": None, "Relu": "Relu", "LeakyRelu": "LeakyRelu <alpha=0.2>", "Sigmoid": "Sigmoid"}


def _bn_params(data, c: int) -> dict[str, np.ndarray]:
    """BN statistics drawn by hypothesis (so failures shrink), gamma of either sign."""
    floats = st.floats(0.25, 4.0)
    gamma = [data.draw(floats) * data.draw(st.sampled_from([1.0, -1.0])) for _ in range(c)]
    return {
        "gamma": np.array(gamma, np.float32),
        "beta": np.array([data.draw(st.floats(-2, 2)) for _ in range(c)], np.float32),
        "mean": np.array([data.draw(st.floats(-2, 2)) for _ in range(c)], np.float32),
        "var": np.array([data.draw(st.floats(0.05, 4.0)) for _ in range(c)], np.float32),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_forward_chains(data):
    """Producer -> [activation] -> BN -> one or two Conv/Gemm consumers. Folds exactly unless an
    activation separates the BN from its producer, a consumer pads and the BN has a shift (then
    the reason says so); never changes what the model computes."""
    c = data.draw(st.integers(1, 4), label="channels")
    act = data.draw(st.sampled_from(sorted(ACTS)), label="activation")
    spatial = data.draw(st.booleans(), label="conv (else gemm)")
    n_consumers = data.draw(st.integers(1, 2), label="consumers")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    inits = _bn_params(data, c)
    lines, padded = [], False
    if spatial:
        inits["W0"] = rng.normal(0, 0.5, (c, 2, 3, 3)).astype(np.float32)
        lines.append("z = Conv <pads=[1,1,1,1]> (x, W0)")
        x_shape = (2, 2, 7, 7)
    else:
        inits["W0"] = rng.normal(0, 0.5, (c, 3)).astype(np.float32)
        lines.append("z = Gemm <transB=1> (x, W0)")
        x_shape = (2, 3)
    lines.append(f"a = {ACTS[act]} (z)" if ACTS[act] else "a = Identity (z)")
    lines.append("b = BatchNormalization (a, gamma, beta, mean, var)")
    outs = []
    for i in range(n_consumers):
        if spatial:
            groups = data.draw(st.sampled_from([g for g in (1, c) if c % g == 0]), label="group")
            k = data.draw(st.integers(1, 3), label="kernel")
            pads = [data.draw(st.integers(0, k - 1)) for _ in range(4)]  # asymmetric too
            auto = data.draw(st.sampled_from(["", "VALID"]), label="auto_pad") if k > 1 else ""
            stride = data.draw(st.integers(1, 2), label="stride")
            attrs = f"group={groups}, strides=[{stride},{stride}]"
            attrs += f', auto_pad="{auto}"' if auto else f", pads={pads}"
            padded |= not auto and any(pads)
            inits[f"W{i + 1}"] = rng.normal(0, 0.5, (2 * groups, c // groups, k, k)).astype(
                np.float32
            )
            lines.append(f"y{i} = Conv <{attrs}> (b, W{i + 1})")
        else:
            inits[f"W{i + 1}"] = rng.normal(0, 0.5, (c, 3)).astype(np.float32)
            inits[f"C{i + 1}"] = rng.normal(0, 1, 3).astype(np.float32)
            lines.append(f"y{i} = Gemm (b, W{i + 1}, C{i + 1})")
        outs.append(f"float y{i}")
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[{",".join(map(str, x_shape))}] x) => ({", ".join(outs)}) {{
          {chr(10).join(lines)}
        }}""",
        inits,
    )
    data_bytes = model.SerializeToString()
    folded, result = fold_bytes(data_bytes)
    feeds = {"x": rng.normal(0, 1, x_shape).astype(np.float32)}
    g, be, m, v = (inits[k].astype(np.float64) for k in ("gamma", "beta", "mean", "var"))
    shift = be - g / np.sqrt(v + 1e-5) * m
    # with no activation the BN folds backward into the producer; forward, the scale alone
    # commutes with zero padding, the shift does not
    if act != "none" and padded and np.any(shift != 0):
        assert result.report.bn_after == 1 and "pads its input" in reasons(result), reasons(result)
    else:
        assert result.report.bn_after == 0, reasons(result)
        assert node_count(onnx.load_from_string(folded)) < node_count(model)
        again, again_result = fold_bytes(folded)
        assert again == folded and not again_result.report.folded
    for ref, got in zip(run(model, feeds), run(folded, feeds), strict=True):
        assert_close(ref, got, *tolerance(np.float32))
