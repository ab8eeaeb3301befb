"""nvmf_phoenix.persist"""
