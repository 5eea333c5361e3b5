"""SSH fleets: a team's own servers (`type: fleet` with `ssh_config`). No cloud account: the server
reaches each host over SSH with the fleet's key, installs nothing but the agent file, and keeps a
tunnel through which the agent reaches the project's bucket on the server."""
