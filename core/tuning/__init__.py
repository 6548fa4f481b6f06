"""Brain-tuning a speech backbone: the model, its loss and collectives, and the Trainer's loop over named steps.

Modules
-------
model           the brain model: backbone (+ LoRA) -> windows -> TRs -> delays -> readout; its optimiser
loss            training losses and ROI weighting
distributed     the collectives the trainer needs inside a torch.distributed process group
members         which subjects a run trains, on which stories
batches         an epoch's blocks, each worker's share of a step, the prepared-input cache
step            one optimiser step over a worker's blocks
story_features  a model's story features, current or frozen (what the protocol and the studies read)
protocol        each epoch's ridge protocol, epoch 0's initialisation, the best epoch (``improves``)
checkpoints     checkpoints with the run's identity and RNG states
trainer         :class:`Trainer`: the loop, read top to bottom
"""
