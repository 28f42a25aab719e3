"""Store terminals: tills connected over ConnectTerminal, and the store-channel messages waiting for persons.

`settings` the stores and their keys · `store` SQL on terminal_messages · `hub` the open streams and who is
at each till (and the NATS subject other replicas hear of new messages on) · `identify` from what a till read
to a person, offers and messages · `stream` one till's conversation (ConnectTerminal) · `expiry` the recurring
job ending messages nobody came for. The provider the delivery flow hands store messages to is
`omni_gateway.providers.terminal`.
"""
