"""What is per member when runs of one architecture train together as one batched model (a
pack; a run alone is the pack of one): which jobs may share a pack (`plan`), each member's
AdamW (`optim`) and its gradients' norms and clipping (`grads`)."""
