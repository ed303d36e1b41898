"""`easel chat`: a local chat with the bot through the same job service as Discord and Telegram."""
