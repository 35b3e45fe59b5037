import pytest

from servewise.errors import InvalidRequestError
from servewise.types import SamplingParams


@pytest.mark.parametrize(("field", "value"), [
    ("n", 0), ("n", 17), ("max_tokens", 0), ("temperature", -0.1), ("temperature", float("nan")),
    ("top_p", 0.0), ("top_p", 1.5), ("top_k", 0), ("min_p", 1.1), ("repetition_penalty", 0.0),
    ("presence_penalty", 2.5), ("frequency_penalty", -3.0), ("logprobs", 21), ("logprobs", -1),
    ("stop", ("",)), ("stop", ("x" * 300,)), ("stop", tuple("abcdefghijklmnopq")),
    ("logit_bias", ((1, 101.0),)), ("logit_bias", ((-1, 1.0),)), ("seed", 2**64), ("min_tokens", -1),
    ("stop_token_ids", (-5,)),
])
def test_out_of_bounds_parameters_are_rejected_with_the_parameter_named(field, value):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field


def test_min_tokens_above_max_tokens_rejected():
    with pytest.raises(InvalidRequestError):
        SamplingParams(max_tokens=3, min_tokens=4)


def test_token_ids_checked_against_the_vocabulary():
    params = SamplingParams(logit_bias=((70000, 1.0),))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        params.check_token_ids(49152)


def test_valid_params_are_frozen():
    p = SamplingParams(temperature=0.0, stop=("\n",), logit_bias=SamplingParams.bias_from_mapping({"5": 2}))
    assert p.greedy and p.logit_bias == ((5, 2.0),)
    with pytest.raises(AttributeError):
        p.temperature = 1.0  # type: ignore[misc]
