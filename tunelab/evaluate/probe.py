"""Forgetting probe: perplexity on a few paragraphs of plain, general English prose.

Fine-tuning on a narrow task can cost a model some of what it knew. The probe measures that
cost the same way for every method and every run (`tunelab.evaluate.forgetting`): the
perplexity of the base model and of each trained run on the text below (written for tunelab;
no data set is needed). A method that leaves the probe perplexity where the base had it has
forgotten little. Token losses are averaged over
every token of the probe (no prompt/response split), in windows of `WINDOW` tokens. A model
whose tokenizer starts text with BOS (Gemma) gets BOS at the start of every window, as its
training data and prompts do: without it Gemma 3 270M reads this English at perplexity 330
instead of 39.
"""

from __future__ import annotations

import torch

from tunelab.data.tokenize import missing_bos
from tunelab.data.types import IGNORE
from tunelab.evaluate.evaluation import mean_token_loss
from tunelab.evaluate.metrics import perplexity_from_loss

PROBE_TEXT = """\
The town sits where the river bends twice before it reaches the sea. In the morning the \
bakers open their shutters first, and the smell of warm bread drifts down the narrow streets \
long before the buses start running. Children walk to school in small groups, arguing about \
football and homework, while their parents hurry to the station with coffee in paper cups.

Most people who live here have never thought of the river as anything special. It floods \
every few winters, and then everyone complains about the mud in their cellars, but in summer \
it is shallow and slow, and families spend whole afternoons on its banks. Old men fish from \
the stone bridge without ever seeming to catch anything, and nobody minds.

The library is the oldest building in the centre. Its floors creak, its windows are tall and \
a little dusty, and the librarian knows most of her readers by name. She keeps a shelf near \
the door for books that people have returned with notes in the margins, because she believes \
a stranger's comment can make a familiar story feel new again.

Learning a new skill as an adult is rarely as graceful as it looks in films. The first weeks \
are full of small mistakes: a wrong note on the piano, a sentence in a foreign language that \
comes out backwards, a loaf of bread that refuses to rise. What helps most is not talent but \
patience, a little practice every day, and the willingness to laugh at yourself.

Weather shapes the rhythm of life more than most of us admit. A grey week makes the evenings \
feel long, and a single bright afternoon can fill the parks with people who suddenly remember \
that they own bicycles. Farmers watch the sky with a professional eye, while everyone else \
simply checks their phones and decides whether to carry an umbrella.

When the day ends, the streets grow quiet again. Lights come on in kitchens, someone practises \
the trumpet badly behind an open window, and the river keeps moving towards the sea, as it has \
done for longer than anyone in the town can remember.
"""

WINDOW = 128  # tokens per probe row
BATCH_ROWS = 4


def probe_batches(tokenizer, text: str = PROBE_TEXT) -> list[dict[str, torch.Tensor]]:
    """The probe as batches {input_ids, attention_mask, labels}: (B, WINDOW) each, each row
    led by BOS where the tokenizer adds one; the last row is right-padded, its pads masked and
    unlabelled."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = missing_bos(tokenizer)
    lead = [] if bos is None else [bos]
    span = WINDOW - len(lead)
    rows = [lead + ids[start : start + span] for start in range(0, len(ids), span)]
    rows = [row for row in rows if len(row) > len(lead) + 1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for first in range(0, len(rows), BATCH_ROWS):
        chunk = rows[first : first + BATCH_ROWS]
        length = max(len(row) for row in chunk)
        input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for index, row in enumerate(chunk):
            input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = 1
        labels = input_ids.masked_fill(mask == 0, IGNORE)
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return batches


def probe_perplexity(model, tokenizer) -> float:
    """exp(mean token loss) of `model` on the probe text."""
    return perplexity_from_loss(mean_token_loss(model, probe_batches(tokenizer)))
