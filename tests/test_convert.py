"""The strict converter: exact round trips, and errors that name each bad tensor."""

import numpy as np
import pytest

from jaxplain.errors import CheckpointError
from jaxplain.models.convert import expected_keys, params_from_state_dict, state_dict_from_params
from jaxplain.models.loading import read_weights


@pytest.fixture(scope="module")
def state(tiny_model):
    return read_weights(tiny_model.directory)


def test_every_tensor_is_used_and_round_trips_exactly(tiny_model, state):
    cfg = tiny_model.config
    assert sorted(expected_keys(cfg)) == sorted(state)
    back = state_dict_from_params(params_from_state_dict(state, cfg), cfg)
    assert sorted(back) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)


def test_layout_of_converted_params(tiny_model, state):
    cfg = tiny_model.config
    p = params_from_state_dict(state, cfg)
    # torch Linear weight [out, in] becomes kernel [in, out]; layers stack on a leading axis
    q1 = state["vision_model.encoder.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(p["vision"]["layers"]["attn"]["q"]["kernel"][1], q1.T)
    # the conv kernel [D, C, p, p] becomes a patch matmul [C·p·p, D]
    conv = state["vision_model.embeddings.patch_embedding.weight"]
    np.testing.assert_array_equal(p["vision"]["patch_embedding"][:, 5], conv[5].reshape(-1))
    assert p["text"]["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 64)


def test_missing_tensor_is_named(tiny_model, state):
    bad = dict(state)
    del bad["text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        params_from_state_dict(bad, tiny_model.config)


def test_leftover_tensor_is_named(tiny_model, state):
    bad = {**state, "vision_model.encoder.layers.2.mlp.fc1.weight": np.zeros((64, 32), np.float32)}
    with pytest.raises(CheckpointError, match=r"left-over tensors.*vision_model\.encoder\.layers\.2\.mlp\.fc1\.weight"):
        params_from_state_dict(bad, tiny_model.config)


def test_position_ids_buffers_are_not_leftovers(tiny_model, state):
    extra = {**state, "text_model.embeddings.position_ids": np.arange(77)[None]}
    params_from_state_dict(extra, tiny_model.config)


def test_wrong_shape_is_named(tiny_model, state):
    bad = {**state, "visual_projection.weight": np.zeros((25, 32), np.float32)}
    with pytest.raises(CheckpointError, match=r"visual_projection\.weight: \(25, 32\) in the checkpoint, \(24, 32\)"):
        params_from_state_dict(bad, tiny_model.config)
