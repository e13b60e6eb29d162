"""Lightning callbacks that hook the loop (guards, seeding, plots)."""
