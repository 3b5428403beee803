"""The bot's Discord side: one extension per area (imagine, history, settings), helpers in `utils`."""
