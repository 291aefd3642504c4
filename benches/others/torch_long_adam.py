"""The seed notebook's char LSTM trained far past its 1000 epochs, in PyTorch: does
Adam at a constant 0.01 stay converged? (It does not: see the doc of
`examples/lstm_from_equations.rs`.) Prints, per seed, the final loss (the sum over the
steps of the per-step MSE), the best, the epochs after 2000 whose loss was ten times
the best so far, and the greedy decoding.

    /tmp/torchenv/bin/python benches/others/torch_long_adam.py 0 1 2
"""
import torch, torch.nn as nn, sys
torch.set_num_threads(1)
TEXT="hello pytorch. how long can a rnn cell remember? show me your limit!"
CH="abcdefghijklmnopqrstuvwxyz ?!.,:;01"
ids=[len(CH)-2]+[CH.index(c) for c in TEXT]+[len(CH)-1]
S=len(CH)
x=torch.eye(S)[ids[:-1]].unsqueeze(1); y=torch.eye(S)[ids[1:]].unsqueeze(1)
for seed in map(int, sys.argv[1:]):
    torch.manual_seed(seed)
    m=nn.LSTM(S,S); opt=torch.optim.Adam(m.parameters(), lr=0.01)
    worst=0; best=1e9; spikes=[]
    for e in range(20000):
        out,_=m(x); loss=sum(nn.functional.mse_loss(out[t],y[t]) for t in range(len(ids)-1))
        opt.zero_grad(); loss.backward(); opt.step()
        l=loss.item()/1
        if e>2000 and l>10*best: spikes.append((e,round(l,3)))
        best=min(best,l)
    dec=''.join(CH[i] for i in m(x)[0].squeeze(1).argmax(1).tolist())
    print(seed, 'final',round(l,4),'best',round(best,4),'spikes',spikes[:5],len(spikes), dec)
