"""The worker daemon: a contributor's machine generating verified rollouts for the swarm."""
