"""The stage converters through the registry and the plugin host."""

from __future__ import annotations

import pytest
import torch

from hat.errors import ConfigError
from hat.plugins import PluginHost
from hat.quant import qmodules as Q
from hat.quant.modes import calibration_mode
from hat.quant.observers import PercentileObserver
from hat.quant.prepare import quantizers
from hat.testing import host_fixture
from tests.quant.nets import make_small

host = host_fixture(None)


def pipeline(host: PluginHost, converters: list[dict], **kwargs):
    cfg = {"type": "ModelConvertPipeline", "converters": converters, **kwargs}
    return host.registry.build(cfg)


def test_torch_native_backend_is_registered(host: PluginHost) -> None:
    assert "torch_native" in host.quant_backends.items
    for name in ("Float2Calibration", "Float2QAT", "QAT2Quantize", "ModelConvertPipeline"):
        assert name in host.registry


def test_float_to_calibration_to_fixed(host: PluginHost) -> None:
    to_calib = pipeline(
        host,
        [{"type": "Float2Calibration", "convert_mode": "fx"}],
        qat_mode="fuse_bn",
        qconfig_params={
            "activation_calibration_observer": "percentile",
            "activation_calibration_qkwargs": {"percentile": 99.9},
        },
    )
    model = to_calib(make_small(), task="toy", stage="calibration")
    assert isinstance(model.block[0], Q.QConv2d) and model.block[0].act == "relu"
    assert all(isinstance(q.observer, PercentileObserver) and q.observer.percentile == 99.9 for q in quantizers(model))
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        model(torch.randn(2, 3, 8, 8))
    fixed = pipeline(host, [{"type": "QAT2Quantize"}], qat_mode="fuse_bn")(model, task="toy", stage="int_infer")
    assert fixed.head.frozen and not fixed.training


def test_float_to_qat_learnable(host: PluginHost) -> None:
    to_qat = pipeline(
        host,
        [{"type": "Float2QAT"}],
        qat_mode="fuse_bn",
        qconfig_params={"activation_qat_qkwargs": {"learnable": True}},
    )
    model = to_qat(make_small(), stage="qat")
    assert all(isinstance(q.scale, torch.nn.Parameter) and q.init_from_data for q in quantizers(model))


def test_unknown_qat_mode_is_a_config_error(host: PluginHost) -> None:
    to_calib = pipeline(host, [{"type": "Float2Calibration"}], qat_mode="bn_train")
    with pytest.raises(ConfigError, match="'bn_train'"):
        to_calib(make_small())


@pytest.mark.parametrize(
    "params,key",
    [
        ({"activation_calibration_observr": "mse"}, "activation_calibration_observr"),
        ({"activation_qat_qkwargs": {"averaging": 0}}, "averaging"),
        ({"weight_qat_qkwargs": {"learnable": True}}, "learnable"),
        ({"activation_calibration_observer": "kl"}, "kl"),
    ],
)
@pytest.mark.parametrize("converter", ["Float2Calibration", "Float2QAT"])
def test_bad_qconfig_params_are_config_errors_naming_the_key(host: PluginHost, params, key, converter) -> None:
    convert = pipeline(host, [{"type": converter}], qat_mode="fuse_bn", qconfig_params=params)
    with pytest.raises(ConfigError, match=key):
        convert(make_small())


def test_unknown_observer_kwarg_is_a_config_error(host: PluginHost) -> None:
    params = {"activation_calibration_observer": "percentile", "activation_calibration_qkwargs": {"pct": 99}}
    convert = pipeline(host, [{"type": "Float2Calibration"}], qconfig_params=params)
    with pytest.raises(ConfigError, match="pct"):
        convert(make_small())


def test_unknown_backend_is_a_config_error(host: PluginHost) -> None:
    convert = pipeline(host, [{"type": "Float2Calibration"}], quant_backend="vendor_x")
    with pytest.raises(ConfigError, match="vendor_x") as info:
        convert(make_small())
    assert "torch_native" in str(info.value)


def test_quantize_before_calibration_is_a_config_error(host: PluginHost) -> None:
    model = pipeline(host, [{"type": "Float2Calibration"}])(make_small())
    with pytest.raises(ConfigError, match="never calibrated") as info:
        pipeline(host, [{"type": "QAT2Quantize"}])(model, task="toy")
    assert "hat train toy --stage calibration" in str(info.value)


def test_converting_a_quantized_model_again_is_a_config_error(host: PluginHost) -> None:
    convert = pipeline(host, [{"type": "Float2Calibration"}, {"type": "Float2QAT"}])
    with pytest.raises(ConfigError, match="already quantized"):
        convert(make_small())
