# A workspace-tool chain: one Alembic revision chain, run into one PostgreSQL schema per project.
#   workspace-tool revision -m "..." --autogenerate   write a revision from the models below
#   workspace-tool ensure PROJECT_ID                  create a project's schema at head
#   workspace-tool upgrade --all                      bring every project schema to head
# The URL comes from --database-url, WORKSPACE_TOOL_DATABASE_URL or DATABASE_URL (the embedded PostgreSQL
# otherwise). Plain Alembic works too: alembic -x schema=project_foo upgrade head

[alembic]
script_location = ${script_location}
# Where your models' package is found (the folder of this file).
prepend_sys_path = %(here)s
path_separator = os
# The models at head (a MetaData or a declarative base): what autogenerate compares with.
workspace_models = ${context.get("workspace_models", "myapp.models:metadata")}
# Set to false to run every revision through Alembic instead of replaying compiled SQL.
# workspace_fast_path = true
# Spare schemas kept at head for new projects (`workspace-tool pool fill`); 0, the default, is no warm pool.
# workspace_pool_size = 0
# sqlalchemy.url = postgresql+psycopg2://user@localhost/dbname

[post_write_hooks]

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = WARNING
handlers =
qualname = alembic

[handler_console]
level = NOTSET
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
