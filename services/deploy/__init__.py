"""Add a GPU host to the fleet over SSH, upgrade it, roll it back, remove it (`autotune deploy`).

The command side of deploying: the CLI, the HTTP API and the agent tools call these functions, so all
of them do the same thing. `engine` orders the steps; `remote` is what happens on the host over
`ssh` (asyncssh); `probe`, `lock`, `layout` and `target` are the pure parts (facts, pinned
dependencies, paths and units, input checks); `authority` gives a secured NATS the host's users;
`node` is what runs on the host (`autotune node`); `tunnel` holds `--via ssh-tunnel`.

    outcome = await deploy(DeployRequest(target="ssh://root@10.0.0.5", host="gpu-7"), Controller(js=js, nats_url=url, data_dir=d))
"""

from autotune.deploy.engine import Controller, deploy, drain
from autotune.deploy.record import DeployRequest, Outcome, Refused, StepReport, UndeployRequest, who
from autotune.deploy.target import BadInput
from autotune.deploy.undeploy import undeploy

__all__ = ["BadInput", "Controller", "DeployRequest", "Outcome", "Refused", "StepReport", "UndeployRequest", "deploy", "drain", "undeploy", "who"]
