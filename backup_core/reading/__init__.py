"""Reading a database: its inventory, the production guard and restore targets."""
