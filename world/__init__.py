"""The simulated world: a catalogue with hidden quality and clickbait, users with latent satisfaction,
topic satiation, session budgets and a next-day return model (reference notes 1.6, "north-star sim").

- `cambrian.world.params.WorldParams`: every simulator parameter.
- `cambrian.world.sim.World`: the live step API (begin_day / next_request / respond / finish), save/load.
- `cambrian.world.policies`: oracle policies that read the hidden truth (tests and calibration only).
- `cambrian.world.generate.generate`: write a world data directory (docs/CONTRACTS.md).
"""
