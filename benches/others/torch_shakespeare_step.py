"""The Shakespeare example's training step in PyTorch, for comparison with
`cargo run --release --example shakespeare -- --steps 40 --max-loss 100 --report-every 1000`
(which prints its ms per step): an embedding of 70 over 65 characters, `nn.GRU` (or
`--cell lstm` / `rnn`) with 2 layers of 128, a linear decoder, mean cross-entropy,
gradients clipped to an L2 norm of 5, Adam at 0.005; 32 windows of 200 characters,
time-major. The characters are random (the time does not depend on them). Prints the
median ms per step after warm-up, for 1 and 2 threads.

    /tmp/torchenv/bin/python benches/others/torch_shakespeare_step.py [--cell gru] [--steps 40]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--cell", default="gru", choices=["gru", "lstm", "rnn"])
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--warmup", type=int, default=5)
args = parser.parse_args()

VOCAB, EMBED, HIDDEN, LAYERS, BATCH, CHUNK = 65, 70, 128, 2, 32, 200


class CharModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[args.cell]
        self.rnn = rnn(EMBED, HIDDEN, num_layers=LAYERS)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)


for threads in (1, 2):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CharModel()
    adam = torch.optim.Adam(model.parameters(), lr=0.005)
    times = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, VOCAB, (CHUNK, BATCH))
        targets = torch.randint(0, VOCAB, (CHUNK, BATCH))
        began = time.perf_counter()
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        adam.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        adam.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - began)
    print(f"{args.cell} {threads} thread(s): {statistics.median(times) * 1e3:.1f} ms per step "
          f"(median of {args.steps}; best {min(times) * 1e3:.1f})")
