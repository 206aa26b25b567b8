"""Records: what is stored per doctor - database tables, queries that enforce ownership, accounts and images.

Owns the SQLModel tables and engine (`db`), keyword-only queries taking a `Session` that only ever see the
given doctor's rows (`crud`), accounts and sign-in (`auth`) and the content-addressed image store (`storage`).
Imports only the base modules (`xray.config`, `xray.errors`): storing records needs no model.
"""
