"""What an image shows, from local models (labels, moderation, faces): see engine.py. Pure image code."""
