"""Channel providers: one module per provider (email over SMTP, SMS over SMPP or HTTP, Web Push, FCM, webhooks,
store terminals), each implementing `ChannelProvider` from `base`. Which providers serve a channel, and in
which order they are tried (failover), is configuration; the delivery flow knows only the interface."""
