"""What the tests start and tear down beyond the product's own local stack."""
