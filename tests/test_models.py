"""MobileNetV2 / V1 architecture: exactly the paper's and exactly Keras', weight for weight."""

import numpy as np
import pytest
import tf_keras

from mnv2_tf import models
from mnv2_tf.errors import UserError
from mnv2_tf.models import common
from mnv2_tf.models.mobilenet_v2 import BlockSpec

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def _weight_layout(model):
    return [
        (layer.name, [tuple(w.shape) for w in layer.weights])
        for layer in model.layers
        if layer.weights
    ]


def test_parameter_count_of_the_reference_classifier():
    model = models.mobilenet_v2(alpha=1.0, input_shape=(224, 224, 3), num_classes=1000)
    assert model.count_params() == 3_538_984


@pytest.mark.parametrize("alpha", ALPHAS)
def test_same_layers_and_parameters_as_keras(alpha):
    ours = models.mobilenet_v2(alpha=alpha, input_shape=(96, 96, 3))
    keras = tf_keras.applications.MobileNetV2(alpha=alpha, input_shape=(96, 96, 3), weights=None)
    assert ours.count_params() == keras.count_params()
    assert _weight_layout(ours) == _weight_layout(keras)


@pytest.mark.parametrize("alpha,size", [(0.35, 96), (1.0, 97), (1.4, 96)])
def test_keras_weights_transplant(alpha, size, tmp_path, randomize_weights):
    # Odd and even sizes: Keras pads explicitly before strided depthwise convs, we use "same".
    shape = (size, size, 3)
    keras = tf_keras.applications.MobileNetV2(
        alpha=alpha, input_shape=shape, weights=None, classifier_activation=None
    )
    randomize_weights(keras)
    path = str(tmp_path / "keras.h5")
    keras.save_weights(path)
    ours = models.mobilenet_v2(alpha=alpha, input_shape=shape, classifier_activation=None)
    report = models.load_imagenet_weights(ours, path)
    assert report.skipped_head == [] and report.not_in_file == []
    assert len(report.loaded) == len(keras.layers) - sum(
        not layer.weights for layer in keras.layers
    )
    images = np.random.default_rng(1).uniform(-1, 1, (2, *shape)).astype(np.float32)
    expected = keras(images, training=False).numpy()
    got = ours(images, training=False).numpy()
    assert np.abs(expected).max() > 1e-2  # a meaningful output, not all zeros
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_weights_load_into_a_new_head_and_another_input_size(tmp_path, randomize_weights):
    keras = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)
    randomize_weights(keras)
    path = str(tmp_path / "keras.h5")
    keras.save_weights(path)
    ours = models.mobilenet_v2(alpha=0.35, input_shape=(64, 64, 3), num_classes=10)
    head_before = ours.get_layer("predictions").get_weights()[0].copy()
    report = models.load_imagenet_weights(ours, path)
    assert report.skipped_head == ["predictions"]
    np.testing.assert_array_equal(ours.get_layer("predictions").get_weights()[0], head_before)
    np.testing.assert_array_equal(
        ours.get_layer("Conv1").get_weights()[0], keras.get_layer("Conv1").get_weights()[0]
    )


def test_weights_from_a_file_url_go_through_the_download_path(tmp_path, randomize_weights):
    keras = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)
    randomize_weights(keras)
    source = tmp_path / "src" / "mobilenet_v2_test.h5"
    source.parent.mkdir()
    keras.save(str(source))  # a whole-model file: weights under /model_weights
    ours = models.mobilenet_v2(alpha=0.35, input_shape=(96, 96, 3))
    report = models.load_imagenet_weights(ours, source.as_uri(), cache_dir=str(tmp_path / "cache"))
    assert report.path.startswith(str(tmp_path / "cache"))
    np.testing.assert_array_equal(
        ours.get_layer("Conv_1_bn").get_weights()[3], keras.get_layer("Conv_1_bn").get_weights()[3]
    )


def test_weights_errors_are_user_errors(tmp_path):
    ours = models.mobilenet_v2(alpha=0.35, input_shape=(96, 96, 3))
    with pytest.raises(UserError, match="not found"):
        models.load_imagenet_weights(ours, str(tmp_path / "missing.h5"))
    wrong_alpha = tmp_path / "alpha1.h5"
    models.mobilenet_v2(alpha=1.0, input_shape=(96, 96, 3)).save_weights(str(wrong_alpha))
    with pytest.raises(UserError, match="another width multiplier"):
        models.load_imagenet_weights(ours, str(wrong_alpha))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(wrong_alpha.read_bytes()[:5000])
    with pytest.raises(UserError, match="HDF5"):
        models.load_imagenet_weights(ours, str(truncated))
    with pytest.raises(UserError, match="could not download"):
        models.load_imagenet_weights(ours, (tmp_path / "nowhere.h5").as_uri(), str(tmp_path))


def test_imagenet_weights_urls_are_keras_names():
    assert models.imagenet_weights_url(1.0, 224).endswith(
        "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    )
    assert models.imagenet_weights_url(0.35, 96, include_top=False).endswith(
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    )
    assert models.imagenet_weights_url(0.25, 128, model="mobilenet_v1").endswith(
        "mobilenet/mobilenet_2_5_128_tf.h5"
    )
    with pytest.raises(UserError, match="no official"):
        models.imagenet_weights_url(0.6, 224)


@pytest.mark.parametrize("alpha", (0.25, 1.0))
def test_mobilenet_v1_is_keras_mobilenet(alpha, tmp_path, randomize_weights):
    shape = (128, 128, 3)
    keras = tf_keras.applications.MobileNet(alpha=alpha, input_shape=shape, weights=None)
    ours = models.mobilenet_v1(alpha=alpha, input_shape=shape)
    assert _weight_layout(ours) == _weight_layout(keras)
    randomize_weights(keras)
    path = str(tmp_path / "v1.h5")
    keras.save_weights(path)
    models.load_imagenet_weights(ours, path)
    images = np.random.default_rng(2).uniform(-1, 1, (2, *shape)).astype(np.float32)
    np.testing.assert_allclose(ours(images).numpy(), keras(images).numpy(), rtol=1e-5, atol=1e-6)


def test_mobilenet_v1_reference_parameter_count():
    # Keras' MobileNet 1.0_224 with 1000 classes.
    assert models.mobilenet_v1().count_params() == 4_253_864


def test_channel_widths_follow_the_paper_and_keras():
    model = models.mobilenet_v2(alpha=1.0, include_top=False)
    assert model.get_layer("Conv1").filters == 32
    assert model.get_layer("block_1_expand").filters == 16 * 6
    assert model.get_layer("block_16_project").filters == 320
    assert model.get_layer("Conv_1").filters == 1280
    small = models.mobilenet_v2(alpha=0.35, input_shape=(32, 32, 3), include_top=False)
    assert small.get_layer("Conv1").filters == 16
    assert small.get_layer("expanded_conv_project").filters == 8
    assert small.get_layer("Conv_1").filters == 1280  # stays 1280 for alpha <= 1
    wide = models.mobilenet_v2(alpha=1.4, input_shape=(32, 32, 3), include_top=False)
    assert wide.get_layer("Conv_1").filters == 1792


def test_any_input_size_and_dynamic_size():
    for size in (32, 33, 100, 225):
        model = models.mobilenet_v2(alpha=0.35, input_shape=(size, size, 3), include_top=False)
        expected = size
        for _ in range(5):
            expected = (expected + 1) // 2
        assert model.output_shape == (None, expected, expected, 1280)
    dynamic = models.mobilenet_v2(alpha=0.35, input_shape=(None, None, 3), num_classes=7)
    assert dynamic(np.zeros((1, 64, 48, 3), np.float32)).shape == (1, 7)
    with pytest.raises(ValueError, match="at least 32 px"):
        models.mobilenet_v2(input_shape=(28, 28, 3))


def test_minimum_input_size_follows_the_strides():
    # Fashion-MNIST at its native 28 px: stem stride removed, output stride 8 -> 4x4 maps.
    small = dict(remove_early_strides=1, output_stride=8, atrous=False, include_top=False)
    model = models.mobilenet_v2(alpha=0.35, input_shape=(28, 28, 3), **small)
    assert model.output_shape == (None, 4, 4, 1280)
    assert models.mobilenet_v2(alpha=0.35, input_shape=(8, 8, 3), **small).output_shape == (
        None, 1, 1, 1280,
    )  # fmt: skip
    with pytest.raises(ValueError, match="at least 8 px"):
        models.mobilenet_v2(alpha=0.35, input_shape=(7, 7, 3), **small)
    v1 = models.mobilenet_v1(alpha=0.25, input_shape=(28, 28, 3), **small)
    assert v1.output_shape == (None, 3, 3, 256)  # Keras' V1 pads strided convs: 28-14-7-3
    with pytest.raises(ValueError, match="at least 16 px"):
        models.mobilenet_v1(input_shape=(15, 15, 3), output_stride=16)


@pytest.mark.parametrize("output_stride", (8, 16, 32))
def test_output_stride_and_endpoints(output_stride):
    model = models.mobilenet_v2(alpha=1.0, include_top=False, output_stride=output_stride)
    final = 224 // output_stride
    assert model.output_shape == (None, final, final, 1280)
    features = models.feature_extractor(model)
    shapes = {name: tuple(t.shape[1:]) for name, t in features.output.items()}

    def size(stride):
        return 224 // min(stride, output_stride)

    assert shapes == {
        "stride2": (size(2), size(2), 16),
        "stride4": (size(4), size(4), 24),
        "stride8": (size(8), size(8), 32),
        "stride16": (size(16), size(16), 96),
        "stride32": (size(32), size(32), 320),
        "layer_15_expansion_output": (size(16), size(16), 576),
        "final": (final, final, 1280),
    }
    dilations = {i: model.get_layer(f"block_{i}_depthwise").dilation_rate[0] for i in range(1, 17)}
    if output_stride == 32:
        assert set(dilations.values()) == {1}
    elif output_stride == 16:
        assert [i for i, d in dilations.items() if d == 2] == [14, 15, 16]
        assert model.get_layer("block_13_depthwise").strides == (1, 1)
    else:  # slim's rule: the block that would stride keeps the old rate
        assert dilations[6] == 1 and dilations[13] == 2
        assert all(dilations[i] == 2 for i in range(7, 14))
        assert all(dilations[i] == 4 for i in range(14, 17))


def test_output_stride_keeps_the_classifier_weights():
    plain = models.mobilenet_v2(alpha=0.35, input_shape=(64, 64, 3))
    atrous = models.mobilenet_v2(alpha=0.35, input_shape=(64, 64, 3), output_stride=8)
    assert _weight_layout(plain) == _weight_layout(atrous)
    with pytest.raises(ValueError, match="output_stride"):
        models.mobilenet_v2(output_stride=4)


@pytest.mark.parametrize("removed,final", [(0, 1), (1, 2), (2, 4)])
def test_remove_early_strides_for_small_images(removed, final):
    model = models.mobilenet_v2(
        alpha=0.35, input_shape=(32, 32, 3), include_top=False, remove_early_strides=removed
    )
    assert model.output_shape == (None, final, final, 1280)
    assert model.get_layer("Conv1").strides == ((2, 2) if removed == 0 else (1, 1))
    assert model.get_layer("block_1_depthwise").strides == ((2, 2) if removed < 2 else (1, 1))


def test_small_image_classifier_without_atrous():
    """The Fashion-MNIST layout: stem stride removed, stride capped at 8, no dilation."""
    model = models.mobilenet_v2(
        alpha=0.35, input_shape=(32, 32, 3), include_top=False, remove_early_strides=1,
        output_stride=8, atrous=False,
    )  # fmt: skip
    assert model.output_shape == (None, 4, 4, 1280)
    depthwise = [layer for layer in model.layers if layer.name.endswith("depthwise")]
    assert all(layer.dilation_rate == (1, 1) for layer in depthwise)
    assert model.get_layer("block_13_depthwise").strides == (1, 1)
    dilated = models.mobilenet_v2(
        alpha=0.35, input_shape=(32, 32, 3), include_top=False, remove_early_strides=1,
        output_stride=8,
    )  # fmt: skip
    assert dilated.get_layer("block_16_depthwise").dilation_rate == (2, 2)
    assert _weight_layout(model) == _weight_layout(dilated)


def test_ablation_switches():
    kwargs = dict(alpha=0.35, input_shape=(32, 32, 3), num_classes=10)
    paper = models.mobilenet_v2(**kwargs)
    names = [layer.name for layer in paper.layers]
    # Shortcuts between bottlenecks: 10 blocks of the table repeat a row at stride 1.
    assert sum(n.endswith("_add") for n in names) == 10
    assert not any(n.endswith("project_relu") for n in names)

    relu = models.mobilenet_v2(linear_bottleneck=False, **kwargs)
    assert sum(layer.name.endswith("project_relu") for layer in relu.layers) == 17

    none = models.mobilenet_v2(shortcut="none", **kwargs)
    assert not any(isinstance(layer, tf_keras.layers.Add) for layer in none.layers)

    expansion = models.mobilenet_v2(shortcut="expansion", **kwargs)
    adds = [layer.name for layer in expansion.layers if isinstance(layer, tf_keras.layers.Add)]
    assert adds and all(n.endswith("_expand_add") for n in adds)
    assert "block_2_expand_add" not in adds  # block 1 strides: the expansions differ in size
    assert "block_3_expand_add" in adds
    for model in (relu, none, expansion):  # ablations change no weight
        assert _weight_layout(model) == _weight_layout(paper)

    t4 = models.mobilenet_v2(expansion=4, **kwargs)
    assert t4.get_layer("block_1_expand").filters == 8 * 4
    assert "expanded_conv_expand" not in [layer.name for layer in t4.layers]  # t=1 row stays
    with pytest.raises(ValueError, match="shortcut"):
        models.mobilenet_v2(shortcut="dense", **kwargs)


def test_a_tiny_table_builds_with_its_own_endpoints():
    table = (BlockSpec(1, 16, 1, 1), BlockSpec(6, 24, 2, 2), BlockSpec(6, 32, 1, 2))
    model = models.mobilenet_v2(
        alpha=0.5, input_shape=(32, 32, 3), block_specs=table, num_classes=3
    )
    assert model.output_shape == (None, 3)
    names = models.endpoint_layer_names(model, table)
    assert names == {
        "stride2": "expanded_conv_project_BN",
        "stride4": "block_2_add",
        "stride8": "block_3_project_BN",
        "layer_5_expansion_output": "block_3_expand_relu",
        "final": "out_relu",
    }


@pytest.mark.slow  # Keras' own fit on our model; the trainer's tests train it in the default suite
def test_tiny_model_trains_without_nan():
    model = models.mobilenet_v2(
        alpha=0.35, input_shape=(32, 32, 3), num_classes=10, remove_early_strides=2, bn_momentum=0.9
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (64, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    model.compile(
        optimizer=tf_keras.optimizers.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    before = model.get_layer("Conv1").get_weights()[0].copy()
    history = model.fit(images, labels, batch_size=16, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert not np.allclose(model.get_layer("Conv1").get_weights()[0], before)
    assert np.all(np.isfinite(model.predict(images[:4], verbose=0)))


def test_bn_arguments_reach_every_batch_norm():
    model = models.mobilenet_v2(
        alpha=0.35, input_shape=(32, 32, 3), bn_momentum=0.9, bn_epsilon=1e-5
    )
    bns = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    assert len(bns) == 52
    assert {(b.momentum, b.epsilon) for b in bns} == {(0.9, 1e-5)}


def test_mixed_precision_keeps_a_float32_classifier():
    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = models.mobilenet_v2(alpha=0.35, input_shape=(32, 32, 3), num_classes=4)
    assert model.get_layer("Conv1").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    v1 = models.mobilenet_v1(alpha=0.25, input_shape=(32, 32, 3), num_classes=4)
    assert v1.output.dtype == "float32"


def test_build_by_name():
    assert (
        models.build("mobilenet_v1", alpha=0.25, input_shape=(32, 32, 3)).name
        == "mobilenet_0.25_32"
    )
    with pytest.raises(ValueError, match="unknown model"):
        models.build("resnet50")


def test_preprocessing_constants_live_with_the_model():
    pixels = np.array([0.0, 127.5, 255.0], np.float32)
    np.testing.assert_allclose(models.preprocess_input(pixels).numpy(), [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(
        models.preprocess_input(pixels.astype(np.uint8)).numpy(), [-1.0, -1 / 255.0, 1.0], atol=1e-6
    )
    spec = models.DEFAULT_PREPROCESSING
    assert (spec.input_size, spec.crop_fraction) == (224, 0.875)
    assert spec.scale * 255 + spec.offset == pytest.approx(1.0)
    np.testing.assert_allclose(
        tf_keras.applications.mobilenet_v2.preprocess_input(pixels.copy()),
        models.preprocess_input(pixels).numpy(),
    )


def test_make_divisible_and_stride_plan():
    assert common.make_divisible(32 * 0.35) == 16  # 8 would be more than 10% below 11.2
    assert common.make_divisible(24 * 0.75) == 24
    assert common.make_divisible(1280 * 1.4) == 1792
    plan = common.plan_strides([2, 1, 2, 1, 2, 2, 1], output_stride=8)
    assert [(p.stride, p.dilation) for p in plan] == [
        (2, 1),
        (1, 1),
        (2, 1),
        (1, 1),
        (2, 1),
        (1, 1),
        (1, 2),
    ]
    plan = common.plan_strides([2, 1, 2, 2], remove_early_strides=2)
    assert [p.stride for p in plan] == [1, 1, 1, 2]
    plan = common.plan_strides([2, 1, 2, 1, 2, 2, 1], output_stride=8, atrous=False)
    assert [(p.stride, p.dilation) for p in plan] == [
        (2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1),
    ]  # fmt: skip
