"""One LightningModule per stage; they orchestrate, the math lives in r1lab.rl, r1lab.kd and r1lab.rewards."""
