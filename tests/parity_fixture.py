"""A parity fixture derived from a recorded one (`NATURELM_PARITY_DIR`, by default ../shared/parity) whose queries hold
the audio placeholder mid-sentence, as BEANS-Zero instructions do: `"Listen to this: <Audio><AudioHere></Audio> "`
in front of each query that does not hold it yet.

Its prompts are derived by the original's rule (NatureLM-audio v1.0.2, `NatureLMAudioProcessor.prepare_instruction`):
the span `"<Audio><AudioHere></Audio> "`, trailing space included, goes in front of an instruction unless the
instruction already holds it; the result is stripped and put into the prompt template. The template is not written
here: it is what surrounds each recorded prompt's user turn. What the original computed after the prompt (token ids,
labels, LM inputs and logits, losses) cannot be derived without the original code, so the derived fixture keeps only
the tensors of the audio alone (`AUDIO_TENSORS`) and the text fields that do not depend on the prompt: tests check
prompts and where the audio goes on it, not generated ids.

Usage: `./run python tests/parity_fixture.py SOURCE_DIR TARGET_DIR` writes one to disk (then run the prompt tests with
`NATURELM_PARITY_DIR=TARGET_DIR`).
"""

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from processing_naturelm import AUDIO_SPAN

# The span the original looks for and puts in front, trailing space included.
ORIGINAL_SPAN = f"{AUDIO_SPAN} "
LEAD_IN = "Listen to this: "
# The reference tensors computed from the audio alone, before any prompt (see the fixture's README).
AUDIO_TENSORS = ("waveform", "fbank", "beats_features", "audio_embeds")
# The text fields of reference_io.json that do not depend on the prompt.
TEXT_FIELDS = ("targets", "audio_files", "spec")


def original_instruction(query: str) -> str:
    """The user turn the original builds from one query."""
    if ORIGINAL_SPAN not in query:
        query = ORIGINAL_SPAN + query
    return query.strip()


def mid_sentence(query: str) -> str:
    """The query with the audio span after a lead-in; a query that already holds the span is kept as it is."""
    return query if ORIGINAL_SPAN in query else f"{LEAD_IN}{ORIGINAL_SPAN}{query}"


def derived_prompt(recorded_prompt: str, query: str, new_query: str) -> str:
    """`recorded_prompt` (made from `query`) with its user turn replaced by the one the original makes of
    `new_query`: the template around the turn is read off the recorded prompt."""
    turn = original_instruction(query)
    if recorded_prompt.count(turn) != 1:
        raise ValueError(f"The recorded prompt {recorded_prompt!r} does not hold the user turn {turn!r} exactly once, "
                         "as the original's rule makes it.")
    head, tail = recorded_prompt.split(turn)
    return head + original_instruction(new_query) + tail


def write_derived_fixture(source: Path, target: Path) -> Path:
    """Write the derived fixture of `source` into `target` (created); the checkpoints and the base LM are links to
    `source`'s. Returns `target`."""
    source, target = Path(source).resolve(), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    recorded = json.loads((source / "reference_io.json").read_text())
    queries = [mid_sentence(query) for query in recorded["queries"]]
    prompts = [derived_prompt(prompt, query, new_query)
               for prompt, query, new_query in zip(recorded["prompts"], recorded["queries"], queries)]
    tensors = load_file(source / "reference_outputs.safetensors")
    kept = {name: tensors[name] for name in AUDIO_TENSORS}
    reference_io = {"queries": queries, "prompts": prompts,
                    **{key: recorded[key] for key in TEXT_FIELDS if key in recorded},
                    "shapes": {name: list(tensor.shape) for name, tensor in kept.items()}}
    (target / "reference_io.json").write_text(json.dumps(reference_io, indent=2))
    save_file(kept, target / "reference_outputs.safetensors")
    for entry in source.iterdir():
        if entry.name not in ("reference_io.json", "reference_outputs.safetensors", "README.md"):
            (target / entry.name).symlink_to(entry)
    (target / "README.md").write_text(
        f"Derived by tests/parity_fixture.py from {source}: each query holds the audio span mid-sentence, the prompts "
        "follow by the original's rule, and only the audio tensors "
        f"({', '.join(AUDIO_TENSORS)}) are kept; ids, labels, logits and losses are not (they depend on the prompt).\n"
    )
    return target


__all__ = ["AUDIO_TENSORS", "derived_prompt", "mid_sentence", "original_instruction", "write_derived_fixture"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write a parity fixture whose queries hold the audio placeholder.")
    parser.add_argument("source", type=Path, help="a parity fixture folder (e.g. ../shared/parity)")
    parser.add_argument("target", type=Path, help="where to write the derived fixture")
    cli = parser.parse_args()
    print(write_derived_fixture(cli.source, cli.target))
