"""The clipmem dashboard: a Streamlit app that browses an ingested run through the backend's HTTP API."""
