"""Location-aware scheduling: sites, power-price feeds, the revenue model, policies
that decide each site's power level, the async scheduler that applies them, and the
back-test that proves the gain on real prices."""
