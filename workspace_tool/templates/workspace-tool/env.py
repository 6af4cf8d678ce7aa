"""Alembic environment of this chain: every migration runs into one project schema.

The logic lives in workspace_tool.alembic_env (it upgrades with the package). The models that
`workspace-tool revision --autogenerate` compares with are named in alembic.ini (workspace_models).
"""

from workspace_tool import alembic_env

alembic_env.run()
