from servewise.engine.detokenizer import StopAwareDetokenizer
from servewise.types import SamplingParams


class PieceTokenizer:
    """Token id i decodes to PIECES[i]; None models a byte that completes no character yet."""

    def __init__(self, pieces):
        self.pieces = pieces

    def new_decode_stream(self, skip_special_tokens=True):
        pieces = self.pieces

        class Stream:
            def step(self, token_id):
                return pieces[token_id]

            def flush(self):
                return ""

        return Stream()


PIECES = ["Hel", "lo", " Wo", "rld", "!", None, "é", "\n\n", "END"]


def _run(params, ids):
    detok = StopAwareDetokenizer(PieceTokenizer(PIECES), params)
    deltas, stop = [], None
    for t in ids:
        stop = detok.add_token(t)
        deltas.append(detok.take_delta(finished=stop is not None))
        if stop:
            break
    return deltas, stop, detok


def test_pieces_join_to_the_full_text():
    deltas, stop, _ = _run(SamplingParams(), [0, 1, 2, 3, 4])
    assert "".join(deltas) == "Hello World!" and stop is None


def test_stop_string_across_token_boundaries_is_excluded():
    deltas, stop, detok = _run(SamplingParams(stop=("lo W",)), [0, 1, 2, 3])
    assert stop == "lo W"
    assert "".join(deltas) == "Hel"


def test_stop_string_included_on_request():
    deltas, stop, _ = _run(SamplingParams(stop=("lo W",), include_stop_str_in_output=True), [0, 1, 2, 3])
    assert "".join(deltas) == "Hello W"


def test_text_that_may_start_a_stop_string_is_held_back():
    detok = StopAwareDetokenizer(PieceTokenizer(PIECES), SamplingParams(stop=("World!",)))
    detok.add_token(0)
    assert detok.take_delta(False) == ""  # the last 5 characters could begin "World!"
    detok.add_token(1)
    detok.add_token(2)
    assert detok.take_delta(False) == "Hel"  # "Hello Wo" minus 5 held back
    assert detok.add_token(3) is None  # "Hello World": not a match yet
    assert detok.take_delta(False) == "lo "
    assert detok.add_token(4) == "World!"
    assert detok.take_delta(True) == ""
    assert detok.text == "Hello "


def test_earliest_stop_string_wins():
    _, stop, detok = _run(SamplingParams(stop=("World", "lo")), [0, 1, 2, 3])
    assert stop == "lo" and detok.text == "Hel"


def test_incomplete_characters_emit_nothing():
    deltas, _, _ = _run(SamplingParams(), [0, 5, 6])
    assert deltas == ["Hel", "", "é"]
