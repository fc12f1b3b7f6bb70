"""The one pretrain -> fine-tune pipeline: tracks (vision, arithmetic) plug in a data module and a model
with named stages (ptft.pipeline.track); the knobs act on stage names (ptft.pipeline.knobs)."""
