"""Behaviour on the real default model (SmolLM2-135M-Instruct): a concept vector moves the
model toward the concept, and a random vector of the same norm does not.

The vector is the mean difference of the probe set's TRAIN pairs at one layer (last prompt
token). On the set's held-out neutral prompts (raw text, none of them in any pair) we
measure the log of the total next-token probability of the set's concept words, steered
minus unsteered, averaged over prompts. Layer and scale were picked by experiment (see
the numbers in the test's output and in the steering report); the margin is one that the
random controls of equal norm (two seeds, both signs) do not reach.
"""

from __future__ import annotations

import pytest
import torch

import probes
from workbench.steering import SteeringVector, extract
from workbench.steering.apply import concept_logprob, concept_token_ids, next_token_logits, steer_report

SET = "sentiment"
LAYER = 12
SCALE = 2.0
N_PAIRS = 32
MARGIN = 0.35  # nats


def _shift(bench, prompts, ids, base_lp, spec) -> float:
    lp = concept_logprob(next_token_logits(bench, prompts, [spec]), ids)
    return float((lp - base_lp).mean())


@pytest.mark.slow
def test_concept_vector_moves_concept_words_and_random_does_not(smol):
    ps = probes.load_set(SET)
    vec = extract(smol, ps.as_tuples("train")[:N_PAIRS], layers=[LAYER])
    prompts = ps.neutral_prompts
    assert prompts and not set(prompts) & {t for pair in ps.as_tuples() for t in pair}
    ids = concept_token_ids(smol.tokenizer, ps.concept_words)
    base = next_token_logits(smol, prompts)
    base_lp = concept_logprob(base, ids)

    up = _shift(smol, prompts, ids, base_lp, vec.steer(SCALE))
    down = _shift(smol, prompts, ids, base_lp, vec.steer(-SCALE))
    controls = []
    for seed in (1, 2):
        rnd = SteeringVector.random_like(vec, seed=seed)
        assert torch.allclose(rnd.directions[LAYER].norm(), vec.directions[LAYER].norm())
        controls += [_shift(smol, prompts, ids, base_lp, rnd.steer(s)) for s in (SCALE, -SCALE)]
    kl = steer_report(smol, [vec.steer(SCALE)], prompts, base_logits=base).kl
    print(
        f"\n{SET} layer {LAYER} scale +-{SCALE} (||v|| = {float(vec.directions[LAYER].norm()):.2f}): "
        f"concept log-prob shift +{SCALE}: {up:+.3f}, -{SCALE}: {down:+.3f}; "
        f"random controls: {', '.join(f'{c:+.3f}' for c in controls)}; KL at +{SCALE}: {kl:.3f} nats"
    )
    assert up > MARGIN, f"positive scale raised the concept log-prob by only {up:.3f} nats"
    assert down < -MARGIN, f"negative scale changed the concept log-prob by {down:+.3f} nats, expected < -{MARGIN}"
    assert max(abs(c) for c in controls) < MARGIN, f"a random vector of equal norm reached the margin: {controls}"
    assert kl > 0
