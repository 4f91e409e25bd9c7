"""Property-based fuzzing of the task spec decoder: whatever the input, a clear SpecError or a spec."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotune.schemas.spec import SpecError, TaskSpec, parse_spec, spec_from_obj
from tests.helpers import small_spec

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
FIELDS = list(small_spec("x")) + ["slo", "quant_config", "parallel_config", "runtime_image_tag", "description"]


def _check(call) -> None:
    try:
        spec = call()
    except SpecError as e:
        assert e.path.startswith("$") and e.message and "Traceback" not in str(e)
    else:
        assert isinstance(spec, TaskSpec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=values)
def test_any_value_in_any_field_gives_a_spec_or_a_clear_error(field, value):
    raw = small_spec("fuzz")
    raw[field] = value
    _check(lambda: spec_from_obj(raw))


@settings(max_examples=200, deadline=None)
@given(section=st.sampled_from(["optimization", "benchmark", "parameters", "slo", "quant_config", "parallel_config"]),
       key=st.text(min_size=1, max_size=20), value=values)
def test_any_nested_key_gives_a_spec_or_a_clear_error(section, key, value):
    raw = small_spec("fuzz")
    raw[section] = {**(raw.get(section) or {}), key: value}
    _check(lambda: spec_from_obj(raw))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_gives_a_spec_or_a_clear_error(text):
    _check(lambda: parse_spec(text, source="fuzz.yaml"))


@settings(max_examples=100, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(FIELDS), values, max_size=6))
def test_any_document_round_trips_through_json_and_yaml(doc):
    try:
        text = json.dumps(doc)
    except ValueError:
        return
    _check(lambda: parse_spec(text, source="fuzz.json"))
    _check(lambda: parse_spec(yaml.safe_dump(doc), source="fuzz.yaml"))


@pytest.mark.parametrize(("text", "path"), [("?", "$"), ("model: {1: x}", "$.model")])
def test_a_key_that_is_not_text_names_where_it_is(text, path):
    """Found by the fuzzer above in CI: YAML `?` is {None: None}, and msgspec says "at `key` in `$`"."""
    with pytest.raises(SpecError) as err:
        parse_spec(text, source="f.yaml")
    assert err.value.path == path and "not a field name" in err.value.message
