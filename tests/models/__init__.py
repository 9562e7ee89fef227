"""Model definitions and loaders shared by the frontend and backend tests."""
